//! The simulated world — the VPC model plus its fabric — kept in one JSON
//! file shared by every process that plays the cloud (the node agents in
//! the simulation). Every change takes an exclusive `flock`, reads the
//! file, applies the change to the model and the fabric, and writes the
//! file back atomically (temp file, fsync, rename).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::fabric::{Fabric, FabricError};
use crate::model::{Cidr, DEFAULT_ENI_QUOTA, Eni, ModelError, Vpc};

/// The VPC id of every simulation.
pub const VPC_ID: &str = "vpc-sim0001";
/// The subnet of every simulation.
pub const SUBNET_ID: &str = "subnet-sim0001";
/// The zone of every simulation.
pub const ZONE: &str = "sim-zone-1";
/// The most zones a simulation has (their subnets are /20s of the VPC).
pub const MAX_ZONES: usize = 8;
/// The subnet's CIDR unless told otherwise.
pub const SUBNET_CIDR: &str = "10.0.16.0/20";
/// The MTU of simulated ENIs.
pub const MTU: u32 = 1500;

/// Failures of the simulated cloud.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The model refused.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The fabric failed.
    #[error("fabric: {0}")]
    Fabric(#[from] FabricError),
    /// The state file could not be read, locked or written.
    #[error("simulated VPC state {path}: {detail}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

/// Per-node limits of a simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    /// ENIs per node, the primary included.
    pub max_enis: u32,
    /// IPs per ENI, its primary IP included.
    pub max_ips_per_eni: u32,
}

impl Default for NodeLimits {
    fn default() -> NodeLimits {
        NodeLimits {
            max_enis: 4,
            max_ips_per_eni: 20,
        }
    }
}

/// The model and, when the simulation has real links, the fabric.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// The VPC.
    pub vpc: Vpc,
    /// The fabric; `None` for a model without links.
    pub fabric: Option<Fabric>,
}

impl World {
    /// A VPC `10.0.0.0/16` with subnet `10.0.16.0/20` in one zone and
    /// `nodes` instances `ins-sim0001`…, each with its primary ENI.
    pub fn new(nodes: usize, limits: NodeLimits, eni_quota: u32) -> Result<World, SimError> {
        World::with_subnet(nodes, limits, eni_quota, Cidr::parse(SUBNET_CIDR)?)
    }

    /// Like [`World::new`] with another subnet CIDR (inside `10.0.0.0/16`).
    pub fn with_subnet(
        nodes: usize,
        limits: NodeLimits,
        eni_quota: u32,
        subnet: Cidr,
    ) -> Result<World, SimError> {
        World::build(
            nodes,
            limits,
            eni_quota,
            &[(SUBNET_ID.into(), ZONE.into(), subnet)],
        )
    }

    /// Like [`World::new`] over `zones` zones (`sim-zone-1`…, at most
    /// [`MAX_ZONES`]), each with one subnet (`subnet-sim0001`
    /// `10.0.16.0/20`, `subnet-sim0002` `10.0.32.0/20`, …); node `i` is in
    /// zone `(i - 1) % zones + 1`.
    pub fn zoned(
        nodes: usize,
        zones: usize,
        limits: NodeLimits,
        eni_quota: u32,
    ) -> Result<World, SimError> {
        if zones == 0 || zones > MAX_ZONES {
            return Err(SimError::Model(ModelError::InvalidParameter(format!(
                "zones must be 1 to {MAX_ZONES}, not {zones}"
            ))));
        }
        let subnets = (1..=zones)
            .map(|z| {
                Ok((
                    format!("subnet-sim{z:04}"),
                    format!("sim-zone-{z}"),
                    Cidr::parse(&format!("10.0.{}.0/20", 16 * z))?,
                ))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        World::build(nodes, limits, eni_quota, &subnets)
    }

    /// Subnets `(id, zone, cidr)`, one zone each; nodes round-robin over them.
    fn build(
        nodes: usize,
        limits: NodeLimits,
        eni_quota: u32,
        subnets: &[(String, String, Cidr)],
    ) -> Result<World, SimError> {
        let mut vpc = Vpc::new(VPC_ID, Cidr::parse("10.0.0.0/16")?, eni_quota);
        for (id, zone, cidr) in subnets {
            vpc.add_subnet(id, zone, *cidr)?;
        }
        for i in 1..=nodes {
            let (subnet, zone, _) = &subnets[(i - 1) % subnets.len()];
            vpc.add_instance(
                &instance_id(i),
                zone,
                limits.max_enis,
                limits.max_ips_per_eni,
                subnet,
            )?;
        }
        Ok(World { vpc, fabric: None })
    }

    /// A single-node world with the default quota.
    pub fn single_node(limits: NodeLimits) -> Result<World, SimError> {
        World::new(1, limits, DEFAULT_ENI_QUOTA)
    }

    /// Creates an ENI, stamped with the time.
    pub fn create_eni(&mut self, subnet_id: &str) -> Result<Eni, SimError> {
        let eni = self.vpc.create_eni(subnet_id)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let stored = self.vpc.enis.get_mut(&eni.id).expect("just created");
        stored.created_unix = now;
        Ok(stored.clone())
    }

    /// Attaches an ENI and plugs it in.
    pub fn attach_eni(&mut self, eni_id: &str, instance_id: &str) -> Result<Eni, SimError> {
        self.vpc.attach_eni(eni_id, instance_id)?;
        let eni = self.vpc.enis[eni_id].clone();
        if let Some(f) = &self.fabric {
            f.plug(&self.vpc, &eni)?;
        }
        Ok(eni)
    }

    /// Detaches an ENI and unplugs it.
    pub fn detach_eni(&mut self, eni_id: &str) -> Result<(), SimError> {
        let eni = self.vpc.detach_eni(eni_id)?;
        if let Some(f) = &self.fabric {
            f.unplug(&eni)?;
        }
        Ok(())
    }

    /// Deletes a detached ENI.
    pub fn delete_eni(&mut self, eni_id: &str) -> Result<(), SimError> {
        Ok(self.vpc.delete_eni(eni_id)?)
    }

    /// Assigns IPs and has the fabric deliver them.
    pub fn assign_ips(&mut self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, SimError> {
        let ips = self.vpc.assign_ips(eni_id, count)?;
        let eni = &self.vpc.enis[eni_id];
        if let (Some(f), Some(_)) = (&self.fabric, &eni.attached_to) {
            f.deliver(eni, &ips)?;
        }
        Ok(ips)
    }

    /// Assigns the named IPs and has the fabric deliver them.
    pub fn assign_named_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), SimError> {
        self.vpc.assign_named_ips(eni_id, ips)?;
        let eni = &self.vpc.enis[eni_id];
        if let (Some(f), Some(_)) = (&self.fabric, &eni.attached_to) {
            f.deliver(eni, ips)?;
        }
        Ok(())
    }

    /// Moves a secondary IP to another ENI and delivers it there: the
    /// route is replaced first, so the address is never delivered nowhere.
    pub fn migrate_ip(&mut self, from: &str, to: &str, ip: Ipv4Addr) -> Result<(), SimError> {
        self.vpc.migrate_ip(from, to, ip)?;
        let (source, dest) = (&self.vpc.enis[from], &self.vpc.enis[to]);
        if let Some(f) = &self.fabric {
            if dest.attached_to.is_some() {
                f.deliver(dest, &[ip])?;
            }
            if source.attached_to.is_some() {
                f.withdraw(source, &[ip])?;
            }
        }
        Ok(())
    }

    /// Unassigns IPs and stops their delivery.
    pub fn unassign_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), SimError> {
        self.vpc.unassign_ips(eni_id, ips)?;
        let eni = &self.vpc.enis[eni_id];
        if let (Some(f), Some(_)) = (&self.fabric, &eni.attached_to) {
            f.withdraw(eni, ips)?;
        }
        Ok(())
    }
}

impl World {
    /// Gives subnets their IPv6 blocks (`ipv6`), routed nowhere by the
    /// fabric but where an ENI holds an address.
    pub fn assign_subnet_ipv6_blocks(
        &mut self,
        blocks: &[(String, String)],
    ) -> Result<Vec<(String, crate::ipv6::Cidr6)>, SimError> {
        let done = self.vpc.assign_subnet_ipv6_blocks(blocks)?;
        if let Some(f) = &self.fabric {
            let cidrs: Vec<crate::ipv6::Cidr6> = done.iter().map(|(_, c)| *c).collect();
            f.add_blocks6(&cidrs)?;
        }
        Ok(done)
    }

    /// Assigns IPv6 addresses to an ENI and has the fabric deliver them.
    pub fn assign_ipv6(
        &mut self,
        eni_id: &str,
        named: &[std::net::Ipv6Addr],
        count: u32,
    ) -> Result<Vec<std::net::Ipv6Addr>, SimError> {
        let ips = self.vpc.assign_ipv6(eni_id, named, count)?;
        let eni = &self.vpc.enis[eni_id];
        if let (Some(f), Some(_)) = (&self.fabric, &eni.attached_to) {
            f.deliver6(eni, &ips)?;
        }
        Ok(ips)
    }

    /// Takes IPv6 addresses off an ENI and out of the fabric.
    pub fn unassign_ipv6(
        &mut self,
        eni_id: &str,
        ips: &[std::net::Ipv6Addr],
    ) -> Result<(), SimError> {
        self.vpc.unassign_ipv6(eni_id, ips)?;
        let eni = &self.vpc.enis[eni_id];
        if let (Some(f), Some(_)) = (&self.fabric, &eni.attached_to) {
            f.withdraw6(eni, ips)?;
        }
        Ok(())
    }
}

/// The id of the `n`th simulated instance (from 1).
pub fn instance_id(n: usize) -> String {
    format!("ins-sim{n:04}")
}

/// The world's file, shared between processes; or, for simulations of many
/// nodes without a fabric (`bench/scale`), the world in this process's
/// memory, where every call would otherwise read and write the whole file.
#[derive(Clone, Debug)]
pub struct SharedWorld {
    path: PathBuf,
    memory: Option<Arc<Mutex<World>>>,
}

impl PartialEq for SharedWorld {
    fn eq(&self, other: &SharedWorld) -> bool {
        match (&self.memory, &other.memory) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => self.path == other.path,
            _ => false,
        }
    }
}

impl Eq for SharedWorld {}

impl SharedWorld {
    /// The world stored at `path`.
    pub fn at(path: &Path) -> SharedWorld {
        SharedWorld {
            path: path.to_path_buf(),
            memory: None,
        }
    }

    /// A world kept in memory only (no file, no fabric): one process plays
    /// the cloud for every node.
    pub fn in_memory(world: World) -> SharedWorld {
        SharedWorld {
            path: PathBuf::new(),
            memory: Some(Arc::new(Mutex::new(world))),
        }
    }

    /// The file (empty for a world in memory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `world` as the initial state, unless the file exists.
    pub fn create_if_missing(
        &self,
        world: impl FnOnce() -> Result<World, SimError>,
    ) -> Result<(), SimError> {
        if self.memory.is_some() {
            return Ok(());
        }
        let _lock = self.lock()?;
        if self.path.exists() {
            return Ok(());
        }
        self.save(&world()?)
    }

    /// The current state.
    pub fn read(&self) -> Result<World, SimError> {
        self.view(World::clone)
    }

    /// Looks at the current state without copying it (in memory) or keeping
    /// it (from the file).
    pub fn view<T>(&self, f: impl FnOnce(&World) -> T) -> Result<T, SimError> {
        if let Some(m) = &self.memory {
            return Ok(f(&m.lock().unwrap_or_else(|p| p.into_inner())));
        }
        let _lock = self.lock()?;
        Ok(f(&self.load()?))
    }

    /// Applies `change` under the lock; the state changes only if it
    /// succeeds.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut World) -> Result<T, SimError>,
    ) -> Result<T, SimError> {
        if let Some(m) = &self.memory {
            let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
            // The model checks before it changes anything, but a failed
            // change must leave nothing behind: work on a copy only when
            // the change fails is not possible, so keep the old state.
            let before = guard.clone();
            return match change(&mut guard) {
                Ok(out) => Ok(out),
                Err(e) => {
                    *guard = before;
                    Err(e)
                }
            };
        }
        let _lock = self.lock()?;
        let mut world = self.load()?;
        let out = change(&mut world)?;
        self.save(&world)?;
        Ok(out)
    }

    /// [`update`](Self::update) for a change that leaves the world as it
    /// was whenever it fails: every single operation of the model does
    /// (each checks before it changes anything), and a world in memory has
    /// no fabric whose failure could follow a change. No copy of the world
    /// is kept, which at thousands of nodes is most of a call's cost.
    pub fn update_atomic<T>(
        &self,
        change: impl FnOnce(&mut World) -> Result<T, SimError>,
    ) -> Result<T, SimError> {
        if let Some(m) = &self.memory {
            let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
            debug_assert!(guard.fabric.is_none(), "a world in memory has no fabric");
            return change(&mut guard);
        }
        self.update(change)
    }

    fn lock(&self) -> Result<Flock<File>, SimError> {
        let lock_path = self.path.with_extension("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.state_err(e))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| self.state_err(e))
    }

    fn load(&self) -> Result<World, SimError> {
        let bytes = std::fs::read(&self.path).map_err(|e| self.state_err(e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.state_err(e))
    }

    fn save(&self, world: &World) -> Result<(), SimError> {
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(world).map_err(|e| self.state_err(e))?;
        let mut f = File::create(&tmp).map_err(|e| self.state_err(e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.state_err(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.state_err(e))
    }

    fn state_err(&self, e: impl std::fmt::Display) -> SimError {
        SimError::State {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoned_worlds_put_nodes_round_robin_into_one_subnet_per_zone() {
        let w = World::zoned(3, 2, NodeLimits::default(), 10).expect("world");
        let zone = |i: usize| w.vpc.instances[&instance_id(i)].zone.clone();
        assert_eq!(
            (zone(1), zone(2), zone(3)),
            (
                "sim-zone-1".into(),
                "sim-zone-2".into(),
                "sim-zone-1".into()
            )
        );
        assert_eq!(w.vpc.subnets[SUBNET_ID].cidr.to_string(), SUBNET_CIDR);
        assert_eq!(w.vpc.subnets["subnet-sim0002"].zone, "sim-zone-2");
        assert_eq!(
            w.vpc.subnets["subnet-sim0002"].cidr.to_string(),
            "10.0.32.0/20"
        );
        assert_eq!(
            World::zoned(1, 1, NodeLimits::default(), 10).expect("one"),
            World::new(1, NodeLimits::default(), 10).expect("new")
        );
        assert!(World::zoned(1, 0, NodeLimits::default(), 10).is_err());
        assert!(World::zoned(1, MAX_ZONES + 1, NodeLimits::default(), 10).is_err());
    }

    #[test]
    fn updates_persist_and_failed_updates_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = SharedWorld::at(&dir.path().join("vpc.json"));
        shared
            .create_if_missing(|| World::new(2, NodeLimits::default(), 10))
            .expect("create");
        let eni = shared
            .update(|w| {
                let eni = w.create_eni(SUBNET_ID)?;
                w.attach_eni(&eni.id, &instance_id(1))
            })
            .expect("attach");
        assert_eq!(eni.device_index, Some(1));
        let before = shared.read().expect("read");
        let err = shared.update(|w| w.attach_eni(&eni.id, &instance_id(2)));
        assert!(matches!(
            err,
            Err(SimError::Model(ModelError::InvalidState(_)))
        ));
        assert_eq!(shared.read().expect("read"), before);
        shared
            .create_if_missing(|| World::new(5, NodeLimits::default(), 10))
            .expect("no-op");
        assert_eq!(shared.read().expect("read").vpc.instances.len(), 2);
    }

    #[test]
    fn concurrent_writers_never_lose_an_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = SharedWorld::at(&dir.path().join("vpc.json"));
        shared
            .create_if_missing(|| World::new(1, NodeLimits::default(), 1000))
            .expect("create");
        std::thread::scope(|s| {
            for _ in 0..4 {
                let shared = shared.clone();
                s.spawn(move || {
                    for _ in 0..10 {
                        shared
                            .update(|w| w.create_eni(SUBNET_ID))
                            .expect("create eni");
                    }
                });
            }
        });
        assert_eq!(shared.read().expect("read").vpc.enis.len(), 41);
    }
}
