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
use crate::phase::IpPhase;

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
            // Just created (by this publisher, or by the first bind of a
            // static claim) and not in the cache yet: nothing to write.
            if live.is_none()
                && let Some(uid) = self.written.ip(name, spec)
            {
                self.ip_uids.entry(name.clone()).or_insert(uid);
                continue;
            }
            if live.is_none() {
                // Not this node's yet: a create, which fails if the
                // address's object exists; one naming another node (the
                // address moved, and that node writes it) is never written
                // over.
                match create_ip(&api, &obj, &self.written).await? {
                    Created::Done(uid) => {
                        self.sent_ips
                            .insert(name.clone(), (spec.clone(), Instant::now()));
                        self.ip_uids.insert(name.clone(), uid);
                        continue;
                    }
                    Created::Theirs(other) => {
                        debug!(ip = %name, node = %other, "VpcIP held by another node; not written");
                        continue;
                    }
                    Created::Same => {
                        self.sent_ips
                            .insert(name.clone(), (spec.clone(), Instant::now()));
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
        self.ips_seen.retain(|name, _| live_names.contains(name));
        for live in self.ips.state() {
            let name = live.name_any();
            let id = format!("vip/{name}");
            // When this node first saw the object, by its own clock: the
            // API server's clock is another host's.
            let seen = *self
                .ips_seen
                .entry(name.clone())
                .or_insert_with(Instant::now);
            // An address on its way here (an incoming claim) is still the
            // claim's: its fence stays.
            if want.ips.contains_key(&name)
                || self.deleted.contains_key(&id)
                || want.arriving.contains(&name)
            {
                continue;
            }
            // A `Requested` fence stays while its request may run; another
            // object this publisher did not write (the first bind of a
            // static claim writes its `VpcIP` before the pool shows the
            // address) for a moment, until the pool catches up.
            if seen.elapsed()
                < deletion_grace(live.spec.ip_phase(), self.ip_uids.contains_key(&name))
            {
                continue;
            }
            self.sent_ips.remove(&name);
            self.ip_uids.remove(&name);
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

/// How long after this node first saw an unwanted `VpcIP` of its own it
/// is left alone: a `Requested` fence while its request may run; one this
/// publisher did not create itself (the first bind of a static claim
/// writes its `VpcIP` before the pool shows the address) a moment, until
/// the pool catches up; one it created, not at all.
fn deletion_grace(phase: Option<IpPhase>, created_here: bool) -> Duration {
    match phase {
        Some(IpPhase::Requested) => FENCE_GRACE,
        _ if created_here => Duration::ZERO,
        _ => SETTLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwanted_vpcip_goes_at_once_only_when_this_publisher_created_it() {
        assert_eq!(deletion_grace(Some(IpPhase::Bound), true), Duration::ZERO);
        assert_eq!(deletion_grace(Some(IpPhase::Bound), false), SETTLE);
        assert_eq!(deletion_grace(None, false), SETTLE);
        assert_eq!(
            deletion_grace(Some(IpPhase::Requested), true),
            FENCE_GRACE,
            "a fence waits for its request"
        );
    }
}
