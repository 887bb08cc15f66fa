//! The `VpcIP` objects of the node's addresses, and the `Requested`
//! fences other nodes' requests left.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::debug;

use super::{Publisher, SETTLE};
use crate::kube::crd::VpcIP;
use crate::kube::objects::Desired;
use crate::kube::writes::{
    Created, apply_params, create_ip, has_node_label, ignore_missing, node_labels,
};

impl Publisher {
    pub(super) async fn publish_ips(&mut self, want: &Desired) -> Result<(), kube::Error> {
        let api: Api<VpcIP> = Api::all(self.client.clone());
        for (name, spec) in &want.ips {
            let live = self.ips.get(&ObjectRef::new(name));
            if live
                .as_ref()
                .is_some_and(|l| &l.spec == spec && has_node_label(&**l, &self.options.node))
                || self
                    .sent_ips
                    .get(name)
                    .is_some_and(|(s, at)| s == spec && at.elapsed() < SETTLE)
            {
                continue;
            }
            let mut obj = VpcIP::new(name, spec.clone());
            obj.metadata.labels = Some(node_labels(&self.options.node));
            if live.is_none() {
                // Not this node's yet: a create, which fails if the
                // address's object exists; one naming another node (the
                // address moved, and that node writes it) is never written
                // over.
                match create_ip(&api, &obj).await? {
                    Created::Done => {
                        self.sent_ips
                            .insert(name.clone(), (spec.clone(), Instant::now()));
                        continue;
                    }
                    Created::Theirs(other) => {
                        debug!(ip = %name, node = %other, "VpcIP held by another node; not written");
                        continue;
                    }
                    Created::Ours => {}
                }
            }
            api.patch(name, &apply_params(), &Patch::Apply(&obj))
                .await?;
            self.sent_ips
                .insert(name.clone(), (spec.clone(), Instant::now()));
        }
        let live_names: HashSet<String> = self.ips.state().iter().map(|l| l.name_any()).collect();
        self.fences_seen.retain(|name, _| live_names.contains(name));
        for live in self.ips.state() {
            let name = live.name_any();
            let id = format!("vip/{name}");
            // An address on its way here (an incoming claim) is still the
            // claim's: its fence stays.
            if want.ips.contains_key(&name)
                || self.deleted.contains_key(&id)
                || want.arriving.contains(&name)
            {
                continue;
            }
            // A fence's age by this node's own clock, from when it was
            // first seen: the API server's clock is another host's.
            if live.spec.ip_phase() == Some(crate::phase::IpPhase::Requested) {
                let seen = *self
                    .fences_seen
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if fence_in_flight(seen.elapsed()) {
                    continue;
                }
            }
            self.sent_ips.remove(&name);
            // Only the version this node saw (the address may have moved
            // to another node, which writes it now).
            let mut params = DeleteParams::background();
            params.preconditions = Some(Preconditions {
                resource_version: live.resource_version(),
                uid: None,
            });
            match api.delete(&name, &params).await {
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                r => ignore_missing(r)?,
            }
            self.deleted.insert(id, Instant::now());
        }
        Ok(())
    }
}

/// How long a `Requested` fence (`kube/claims.rs`) is left alone while
/// the pool does not hold its address yet: the ADD that made it is asking
/// the cloud (an incoming claim of the pool keeps asking). Older, it is a
/// crashed attempt's and is deleted.
const FENCE_GRACE: Duration = Duration::from_secs(60);

/// Whether a `Requested` fence this node first saw `seen_for` ago may
/// still have its request under way.
fn fence_in_flight(seen_for: Duration) -> bool {
    seen_for < FENCE_GRACE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_fence_is_left_alone_only_while_its_request_may_run() {
        assert!(fence_in_flight(FENCE_GRACE - Duration::from_millis(1)));
        assert!(!fence_in_flight(FENCE_GRACE));
    }
}
