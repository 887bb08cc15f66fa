//! The cloud as the simulated VPC of `vpc-sim`: the model and its fabric,
//! shared through a locked state file with every other node of the
//! simulation. With no shared file given, the agent keeps a single-node
//! world of its own under its state directory.

use std::net::Ipv4Addr;
use std::path::Path;

use vpc_sim::model::ModelError;
use vpc_sim::world::{MTU, NodeLimits, SharedWorld, SimError, World};

use super::{Cloud, CloudError, Eni, Limits, NodeInfo, Subnet};

/// One node's view of the simulated VPC.
#[derive(Clone, Debug)]
pub struct SimCloud {
    world: SharedWorld,
    instance: String,
}

impl SimCloud {
    /// Opens the world at `path` as `instance` (default: the world's only
    /// instance), creating a single-node world with `limits` if the file
    /// does not exist.
    pub fn open(
        path: &Path,
        instance: Option<&str>,
        limits: NodeLimits,
    ) -> Result<SimCloud, CloudError> {
        let world = SharedWorld::at(path);
        world
            .create_if_missing(|| World::single_node(limits))
            .map_err(sim_error)?;
        let instances: Vec<String> = world
            .read()
            .map_err(sim_error)?
            .vpc
            .instances
            .keys()
            .cloned()
            .collect();
        let instance = match instance {
            Some(id) if instances.iter().any(|i| i == id) => id.to_string(),
            Some(id) => {
                return Err(CloudError::NotFound(format!(
                    "instance {id} in {}",
                    path.display()
                )));
            }
            None if instances.len() == 1 => instances[0].clone(),
            None => {
                return Err(CloudError::InvalidState(format!(
                    "{} holds {} instances; say which with --instance-id",
                    path.display(),
                    instances.len()
                )));
            }
        };
        Ok(SimCloud { world, instance })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SharedWorld, &str) -> Result<T, SimError> + Send + 'static,
    ) -> Result<T, CloudError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this.world, &this.instance))
            .await
            .map_err(|e| CloudError::Other(format!("simulated cloud call failed: {e}")))?
            .map_err(sim_error)
    }
}

impl Cloud for SimCloud {
    async fn node(&self) -> Result<NodeInfo, CloudError> {
        self.run(|world, instance| {
            let w = world.read()?;
            let ins = &w.vpc.instances[instance];
            let subnet = w
                .vpc
                .subnets_in_zone(&ins.zone)
                .into_iter()
                .next()
                .ok_or_else(|| {
                    SimError::Model(ModelError::NotFound {
                        kind: "subnet in zone",
                        id: ins.zone.clone(),
                    })
                })?;
            Ok(NodeInfo {
                instance_id: ins.id.clone(),
                zone: ins.zone.clone(),
                vpc_id: w.vpc.id.clone(),
                subnet: Subnet {
                    id: subnet.id.clone(),
                    zone: subnet.zone.clone(),
                    gateway: subnet.gateway(),
                    network: subnet.cidr.network,
                    prefix_len: subnet.cidr.prefix,
                },
                limits: Limits {
                    max_enis: ins.max_enis,
                    max_ips_per_eni: ins.max_ips_per_eni,
                },
                mtu: MTU,
            })
        })
        .await
    }

    async fn create_eni(&self, subnet_id: &str) -> Result<Eni, CloudError> {
        let subnet_id = subnet_id.to_string();
        self.run(move |world, _| world.update(|w| w.create_eni(&subnet_id)))
            .await
            .map(to_eni)
    }

    async fn attach_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let eni_id = eni_id.to_string();
        self.run(move |world, instance| {
            world.update(|w| w.attach_eni(&eni_id, instance).map(|_| ()))
        })
        .await
    }

    async fn detach_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let eni_id = eni_id.to_string();
        self.run(move |world, _| world.update(|w| w.detach_eni(&eni_id)))
            .await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let eni_id = eni_id.to_string();
        self.run(move |world, _| world.update(|w| w.delete_eni(&eni_id)))
            .await
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, CloudError> {
        let eni_id = eni_id.to_string();
        self.run(move |world, _| world.update(|w| w.assign_ips(&eni_id, count)))
            .await
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), CloudError> {
        let (eni_id, ips) = (eni_id.to_string(), ips.to_vec());
        self.run(move |world, _| world.update(|w| w.unassign_ips(&eni_id, &ips)))
            .await
    }

    async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
        self.run(|world, instance| {
            Ok(world
                .read()?
                .vpc
                .enis_of(instance)
                .cloned()
                .map(to_eni)
                .collect())
        })
        .await
    }
}

fn to_eni(e: vpc_sim::model::Eni) -> Eni {
    Eni {
        id: e.id,
        mac: e.mac,
        subnet_id: e.subnet_id,
        primary_ip: e.primary_ip,
        secondary_ips: e.secondary_ips,
        primary: e.primary,
        attached_to: e.attached_to,
    }
}

fn sim_error(e: SimError) -> CloudError {
    match e {
        SimError::Model(m) => match m {
            ModelError::EniQuotaExceeded { quota } => CloudError::EniQuota { quota },
            ModelError::InstanceEniLimit { instance, limit } => {
                CloudError::EniLimit { instance, limit }
            }
            ModelError::EniIpLimit {
                eni,
                requested,
                limit,
            } => CloudError::IpLimit {
                eni,
                requested,
                limit,
            },
            ModelError::SubnetExhausted(s) => CloudError::SubnetExhausted(s),
            ModelError::NotFound { kind, id } => CloudError::NotFound(format!("{kind} {id}")),
            other => CloudError::InvalidState(other.to_string()),
        },
        other => CloudError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_fresh_world_has_one_node_and_enforces_its_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = SimCloud::open(
            &dir.path().join("vpc.json"),
            None,
            NodeLimits {
                max_enis: 2,
                max_ips_per_eni: 3,
            },
        )
        .expect("open");
        block(async {
            let node = cloud.node().await.expect("node");
            let eni = cloud.create_eni(&node.subnet.id).await.expect("create");
            cloud.attach_eni(&eni.id).await.expect("attach");
            let other = cloud.create_eni(&node.subnet.id).await.expect("create");
            assert!(matches!(
                cloud.attach_eni(&other.id).await,
                Err(CloudError::EniLimit { limit: 2, .. })
            ));
            assert_eq!(cloud.assign_ips(&eni.id, 2).await.expect("assign").len(), 2);
            assert!(matches!(
                cloud.assign_ips(&eni.id, 1).await,
                Err(CloudError::IpLimit { .. })
            ));
            assert_eq!(cloud.list_enis().await.expect("list").len(), 2);
        });
    }

    #[test]
    fn an_unknown_instance_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = SimCloud::open(
            &dir.path().join("vpc.json"),
            Some("ins-nope"),
            NodeLimits::default(),
        );
        assert!(matches!(err, Err(CloudError::NotFound(_))));
    }
}
