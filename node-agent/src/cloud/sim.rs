//! The in-process VPC model: one VPC, one subnet in the node's zone, one
//! instance with per-instance limits. Its state is saved to a JSON file
//! after every change (temp file, fsync, rename) so it behaves like a real
//! cloud across agent restarts.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Cloud, CloudError, Eni, Limits, NodeInfo, Subnet};

/// The shape of the simulated VPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// ENIs per instance, the primary included.
    pub max_enis: u32,
    /// IPs per ENI, its primary IP included.
    pub max_ips_per_eni: u32,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            max_enis: 4,
            max_ips_per_eni: 20,
        }
    }
}

const VPC_ID: &str = "vpc-sim0001";
const SUBNET_ID: &str = "subnet-sim0001";
const ZONE: &str = "sim-zone-1";
const INSTANCE_ID: &str = "ins-sim0001";
const SUBNET_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 16, 0);
const SUBNET_PREFIX: u8 = 20;
const MTU: u32 = 1500;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    next_eni: u32,
    /// Addresses of the subnet handed out so far (offset from the network).
    next_host: u32,
    released: Vec<Ipv4Addr>,
    enis: BTreeMap<String, SimEni>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SimEni {
    id: String,
    mac: String,
    primary_ip: Ipv4Addr,
    secondary_ips: Vec<Ipv4Addr>,
    primary: bool,
    attached_to: Option<String>,
}

/// The in-process VPC.
#[derive(Debug)]
pub struct SimVpc {
    config: SimConfig,
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl SimVpc {
    /// A VPC kept in `path` (loaded if it exists), or only in memory when
    /// `path` is `None`. A new VPC starts with the node's primary ENI.
    pub fn open(config: SimConfig, path: Option<&Path>) -> Result<SimVpc, CloudError> {
        let existing = match path {
            Some(p) if p.exists() => {
                let bytes = std::fs::read(p)
                    .map_err(|e| CloudError::State(format!("{}: {e}", p.display())))?;
                Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| CloudError::State(format!("{}: {e}", p.display())))?,
                )
            }
            _ => None,
        };
        let vpc = SimVpc {
            config,
            path: path.map(Path::to_path_buf),
            state: Mutex::new(State::default()),
        };
        match existing {
            Some(state) => *vpc.lock() = state,
            None => {
                let mut state = State {
                    next_host: 2,
                    ..State::default()
                };
                let eni = new_eni(&mut state, true)?;
                state.enis.get_mut(&eni).expect("just created").attached_to =
                    Some(INSTANCE_ID.into());
                vpc.save(&state)?;
                *vpc.lock() = state;
            }
        }
        Ok(vpc)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a copy of the state and keeps the copy only if `f`
    /// succeeded and the copy was saved.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let out = f(&mut next)?;
        self.save(&next)?;
        *guard = next;
        Ok(out)
    }

    fn save(&self, state: &State) -> Result<(), CloudError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |e: std::io::Error| CloudError::State(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(
            &serde_json::to_vec_pretty(state).map_err(|e| CloudError::State(e.to_string()))?,
        )
        .map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    fn to_eni(e: &SimEni) -> Eni {
        Eni {
            id: e.id.clone(),
            mac: e.mac.clone(),
            subnet_id: SUBNET_ID.into(),
            primary_ip: e.primary_ip,
            secondary_ips: e.secondary_ips.clone(),
            primary: e.primary,
            attached_to: e.attached_to.clone(),
        }
    }
}

fn subnet_size() -> u32 {
    1 << (32 - SUBNET_PREFIX)
}

fn take_ip(state: &mut State) -> Result<Ipv4Addr, CloudError> {
    if let Some(ip) = state.released.pop() {
        return Ok(ip);
    }
    // The last address is the broadcast address.
    if state.next_host >= subnet_size() - 1 {
        return Err(CloudError::SubnetExhausted(SUBNET_ID.into()));
    }
    let ip = Ipv4Addr::from(u32::from(SUBNET_NET) + state.next_host);
    state.next_host += 1;
    Ok(ip)
}

fn new_eni(state: &mut State, primary: bool) -> Result<String, CloudError> {
    state.next_eni += 1;
    let n = state.next_eni;
    let id = format!("eni-sim{n:05}");
    let primary_ip = take_ip(state)?;
    let eni = SimEni {
        id: id.clone(),
        mac: format!("02:56:50:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        primary_ip,
        secondary_ips: Vec::new(),
        primary,
        attached_to: None,
    };
    state.enis.insert(id.clone(), eni);
    Ok(id)
}

impl Cloud for SimVpc {
    async fn node(&self) -> Result<NodeInfo, CloudError> {
        Ok(NodeInfo {
            instance_id: INSTANCE_ID.into(),
            zone: ZONE.into(),
            vpc_id: VPC_ID.into(),
            subnet: Subnet {
                id: SUBNET_ID.into(),
                zone: ZONE.into(),
                gateway: Ipv4Addr::from(u32::from(SUBNET_NET) + 1),
                network: SUBNET_NET,
                prefix_len: SUBNET_PREFIX,
            },
            limits: Limits {
                max_enis: self.config.max_enis,
                max_ips_per_eni: self.config.max_ips_per_eni,
            },
            mtu: MTU,
        })
    }

    async fn create_eni(&self, subnet_id: &str) -> Result<Eni, CloudError> {
        if subnet_id != SUBNET_ID {
            return Err(CloudError::NotFound(subnet_id.into()));
        }
        self.mutate(|s| {
            let id = new_eni(s, false)?;
            Ok(SimVpc::to_eni(&s.enis[&id]))
        })
    }

    async fn attach_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let limit = self.config.max_enis;
        self.mutate(|s| {
            let attached = s.enis.values().filter(|e| e.attached_to.is_some()).count() as u32;
            if attached >= limit {
                return Err(CloudError::EniLimit {
                    instance: INSTANCE_ID.into(),
                    limit,
                });
            }
            let eni = s
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| CloudError::NotFound(eni_id.into()))?;
            eni.attached_to = Some(INSTANCE_ID.into());
            Ok(())
        })
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        self.mutate(|s| {
            let eni = s
                .enis
                .remove(eni_id)
                .ok_or_else(|| CloudError::NotFound(eni_id.into()))?;
            s.released.push(eni.primary_ip);
            s.released.extend(eni.secondary_ips);
            Ok(())
        })
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, CloudError> {
        let limit = self.config.max_ips_per_eni;
        self.mutate(|s| {
            let held = s
                .enis
                .get(eni_id)
                .ok_or_else(|| CloudError::NotFound(eni_id.into()))?
                .secondary_ips
                .len() as u32;
            if held + 1 + count > limit {
                return Err(CloudError::IpLimit {
                    eni: eni_id.into(),
                    requested: count,
                    limit,
                });
            }
            let ips = (0..count)
                .map(|_| take_ip(s))
                .collect::<Result<Vec<_>, _>>()?;
            s.enis
                .get_mut(eni_id)
                .expect("checked above")
                .secondary_ips
                .extend(&ips);
            Ok(ips)
        })
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
        self.mutate(|s| {
            let eni = s
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| CloudError::NotFound(eni_id.into()))?;
            eni.secondary_ips.retain(|ip| !ips.contains(ip));
            s.released.extend(ips);
            Ok(())
        })
    }

    async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
        Ok(self
            .lock()
            .enis
            .values()
            .filter(|e| e.attached_to.as_deref() == Some(INSTANCE_ID))
            .map(SimVpc::to_eni)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn enforces_instance_limits() {
        let vpc = SimVpc::open(
            SimConfig {
                max_enis: 2,
                max_ips_per_eni: 3,
            },
            None,
        )
        .expect("vpc");
        block(async {
            let subnet = vpc.node().await.expect("node").subnet.id;
            let eni = vpc.create_eni(&subnet).await.expect("create");
            vpc.attach_eni(&eni.id).await.expect("attach");
            let other = vpc.create_eni(&subnet).await.expect("create");
            assert!(matches!(
                vpc.attach_eni(&other.id).await,
                Err(CloudError::EniLimit { limit: 2, .. })
            ));
            assert_eq!(vpc.assign_ips(&eni.id, 2).await.expect("assign").len(), 2);
            assert!(matches!(
                vpc.assign_ips(&eni.id, 1).await,
                Err(CloudError::IpLimit { .. })
            ));
            assert_eq!(vpc.list_enis().await.expect("list").len(), 2);
        });
    }

    #[test]
    fn state_survives_reopen_and_addresses_are_never_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vpc.json");
        let first = block(async {
            let vpc = SimVpc::open(SimConfig::default(), Some(&path)).expect("vpc");
            let eni = vpc.create_eni(SUBNET_ID).await.expect("create");
            vpc.attach_eni(&eni.id).await.expect("attach");
            vpc.assign_ips(&eni.id, 3).await.expect("assign")
        });
        block(async {
            let vpc = SimVpc::open(SimConfig::default(), Some(&path)).expect("reopen");
            let enis = vpc.list_enis().await.expect("list");
            assert_eq!(enis.len(), 2);
            let eni = enis.iter().find(|e| !e.primary).expect("secondary");
            assert_eq!(eni.secondary_ips, first);
            let more = vpc.assign_ips(&eni.id, 3).await.expect("assign");
            assert!(more.iter().all(|ip| !first.contains(ip)));
        });
    }
}
