//! The instance metadata service, two ways:
//!
//! - `GET /latest/meta-data/<path>` answers as Tencent's metadata endpoint
//!   does: for the instance the request comes from, known by the caller's
//!   address (an instance's primary IP, or an address given to
//!   `vpc-sim serve --metadata-client`, such as a node's management
//!   address). One URL serves every node, as a DaemonSet needs.
//! - `GET /<instance-id>/latest/meta-data/<path>` answers for that instance
//!   whoever asks (the host-process agents of `vpc-sim up` all call from
//!   the host, so each is given `http://<emulator>/<instance-id>`).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::world::SharedWorld;

/// The region every simulation reports.
pub const REGION: &str = "sim-region-1";

/// The text for `path`, or `None` when there is none.
pub fn answer(
    world: &SharedWorld,
    path: &str,
    peer: Option<IpAddr>,
    clients: &HashMap<IpAddr, String>,
) -> Option<String> {
    let (instance, key) = caller(world, path, peer, clients)?;
    world.view(|w| in_world(w, &instance, &key)).ok()?
}

/// The instance a metadata request `path` is answered for, and the key it
/// asks (what follows `latest/meta-data/`).
pub fn caller(
    world: &SharedWorld,
    path: &str,
    peer: Option<IpAddr>,
    clients: &HashMap<IpAddr, String>,
) -> Option<(String, String)> {
    world
        .view(|w| {
            let (instance, key) = match path.strip_prefix("/latest/meta-data/") {
                Some(key) => {
                    let peer = peer?;
                    let instance = match clients.get(&peer) {
                        Some(i) => i.clone(),
                        None => w
                            .vpc
                            .enis
                            .values()
                            .find(|e| e.primary && IpAddr::V4(e.primary_ip) == peer)?
                            .attached_to
                            .clone()?,
                    };
                    (instance, key)
                }
                None => {
                    let (instance, rest) = path.strip_prefix('/')?.split_once('/')?;
                    (
                        instance.to_string(),
                        rest.strip_prefix("latest/meta-data/")?,
                    )
                }
            };
            w.vpc
                .instances
                .contains_key(&instance)
                .then(|| (instance, key.to_string()))
        })
        .ok()?
}

fn in_world(w: &crate::world::World, instance: &str, key: &str) -> Option<String> {
    let ins = w.vpc.instances.get(instance)?;
    let primary = w.vpc.enis_of(instance).find(|e| e.primary)?;
    let mac = primary.mac.to_ascii_lowercase();
    let text = match key {
        "instance-id" => ins.id.clone(),
        "placement/zone" => ins.zone.clone(),
        "placement/region" => REGION.to_string(),
        "mac" => mac,
        "local-ipv4" => primary.primary_ip.to_string(),
        other => {
            let rest = other.strip_prefix("network/interfaces/macs/")?;
            let (m, field) = rest.split_once('/')?;
            let eni = w
                .vpc
                .enis_of(instance)
                .find(|e| e.mac.eq_ignore_ascii_case(m))?;
            match field {
                "vpc-id" => w.vpc.id.clone(),
                "subnet-id" => eni.subnet_id.clone(),
                "primary-local-ipv4" => eni.primary_ip.to_string(),
                "eni-id" => eni.id.clone(),
                _ => return None,
            }
        }
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{NodeLimits, World};

    fn world(dir: &std::path::Path) -> SharedWorld {
        let shared = SharedWorld::at(&dir.join("vpc.json"));
        shared
            .create_if_missing(|| World::new(2, NodeLimits::default(), 100))
            .expect("world");
        shared
    }

    #[test]
    fn the_caller_is_known_by_its_primary_ip_or_a_registered_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = world(dir.path());
        let w = shared.read().expect("read");
        let mut ids: Vec<&String> = w.vpc.instances.keys().collect();
        ids.sort();
        let (first, second) = (ids[0].clone(), ids[1].clone());
        let primary = w
            .vpc
            .enis_of(&second)
            .find(|e| e.primary)
            .expect("primary")
            .primary_ip;
        let mgmt: IpAddr = "100.64.1.11".parse().expect("ip");
        let clients = HashMap::from([(mgmt, first.clone())]);
        let ask = |peer: Option<IpAddr>, path: &str| answer(&shared, path, peer, &clients);

        assert_eq!(
            ask(Some(mgmt), "/latest/meta-data/instance-id"),
            Some(first.clone())
        );
        assert_eq!(
            ask(Some(IpAddr::V4(primary)), "/latest/meta-data/instance-id"),
            Some(second.clone())
        );
        assert_eq!(
            ask(Some(IpAddr::V4(primary)), "/latest/meta-data/local-ipv4"),
            Some(primary.to_string())
        );
        // A stranger, or no address at all, learns nothing.
        let stranger: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(ask(Some(stranger), "/latest/meta-data/instance-id"), None);
        assert_eq!(ask(None, "/latest/meta-data/instance-id"), None);
        // The per-instance form answers whoever asks.
        assert_eq!(
            ask(
                Some(stranger),
                &format!("/{second}/latest/meta-data/instance-id")
            ),
            Some(second)
        );
    }
}
