//! The instance metadata service, per node: `GET /<instance-id>/latest/
//! meta-data/<path>` answers as Tencent's metadata endpoint answers that
//! instance's `GET /latest/meta-data/<path>` (a node's agent is given
//! `http://<emulator>/<instance-id>` as its metadata base URL).

use crate::world::SharedWorld;

/// The region every simulation reports.
pub const REGION: &str = "sim-region-1";

/// The text for `path`, or `None` when there is none.
pub fn answer(world: &SharedWorld, path: &str) -> Option<String> {
    let (instance, rest) = path.strip_prefix('/')?.split_once('/')?;
    let key = rest.strip_prefix("latest/meta-data/")?;
    world.view(|w| in_world(w, instance, key)).ok()?
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
