//! The claim objects of the node's pool: written as held, left to the
//! node that took one over, orphaned with their owner, deleted once
//! their IP is freed.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::{OWNER_LOOKUP, Publisher, SETTLE};
use crate::agent::Reclaimed;
use crate::kube::crd::{DeletePolicy, VpcIPClaim};
use crate::kube::objects;
use crate::kube::objects::{ClaimObject, Desired};
use crate::kube::writes::{
    apply_claim, ignore_missing, other_holder, owner_gone, owning_ip, remove_finalizer, same_claim,
    unreferenced_owner, was_written_with,
};

impl Publisher {
    /// Whether a claim object that lost its reference to `wanted` was
    /// orphaned by it (see [`was_written_with`]), or adopted by a new
    /// workload; `None` when the owner could not be looked up.
    async fn orphaned_by(
        &self,
        namespace: &str,
        live: &VpcIPClaim,
        wanted: &OwnerReference,
    ) -> Option<bool> {
        if was_written_with(live, wanted) {
            return Some(true);
        }
        match tokio::time::timeout(OWNER_LOOKUP, owner_gone(&self.client, namespace, wanted)).await
        {
            Ok(Ok(gone)) => Some(gone),
            Ok(Err(e)) => {
                warn!(namespace, owner = %wanted.name, error = %e, "cannot look up a claim's owner; the claim is not written this pass");
                None
            }
            Err(_) => None,
        }
    }

    /// The claim forgets the owner it was orphaned by; the next workload
    /// whose pod binds it adopts it.
    async fn disown(&self, key: &(String, String), uid: &str) {
        match Arc::clone(&self.feed)
            .disown(key.0.clone(), key.1.clone(), uid.to_string())
            .await
        {
            Ok(()) => {
                info!(namespace = %key.0, name = %key.1, owner = %uid, "claim orphaned by its owner; kept without it")
            }
            Err(e) => {
                warn!(namespace = %key.0, name = %key.1, error = %e.message, "cannot orphan a claim; will retry")
            }
        }
    }

    pub(super) async fn publish_claims(&mut self, want: &Desired) -> Result<(), kube::Error> {
        for (key, obj) in &want.claims {
            let live = self.claims.get(&ObjectRef::new(&key.1).within(&key.0));
            // The object is the fence: one that names another node as the
            // holder (it took the claim over) is never written back, nor
            // its deletion carried out here; the claim leaves this node
            // instead. Looked at before anything else.
            if let Some(holder) = live
                .as_ref()
                .and_then(|l| other_holder(l, &self.options.node))
            {
                self.leave(key, &holder).await;
                continue;
            }
            if let Some(live) = &live
                && live.metadata.deletion_timestamp.is_some()
            {
                self.deletion(live, Some(obj)).await?;
                continue;
            }
            let ip_uid = self.ip_uid(&obj.status.ip);
            if live
                .as_ref()
                .is_some_and(|l| same_claim(l, obj, &self.options.node, ip_uid.as_deref()))
                || self
                    .sent_claims
                    .get(key)
                    .is_some_and(|(o, at)| o == obj && at.elapsed() < SETTLE)
            {
                continue;
            }
            // The garbage collector took the owner's reference off (its
            // workload was deleted with --cascade=orphan): written back, it
            // would make the collector delete the claim once that owner is
            // gone. The claim forgets its owner instead; the next workload
            // whose pod binds it adopts it.
            if let Some(live) = &live
                && let Some(wanted) = unreferenced_owner(live, obj)
            {
                match self.orphaned_by(&key.0, live, &wanted).await {
                    // A new workload adopted the claim: written below.
                    Some(false) => {}
                    // Not known yet: nothing written this pass.
                    None => continue,
                    Some(true) => {
                        self.disown(key, &wanted.uid).await;
                        continue;
                    }
                }
            }
            let current = match live {
                Some(l) => Some((*l).clone()),
                None => {
                    let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), &key.0);
                    api.get_opt(&key.1).await?
                }
            };
            if let Some(holder) = current
                .as_ref()
                .and_then(|c| other_holder(c, &self.options.node))
            {
                self.leave(key, &holder).await;
                continue;
            }
            let version = current.as_ref().and_then(|c| c.resource_version());
            match apply_claim(
                &self.client,
                &self.options.node,
                key,
                obj,
                ip_uid.as_deref(),
                version,
            )
            .await
            {
                // Changed since it was read (another node may be taking
                // it over): looked at again next pass.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    debug!(namespace = %key.0, name = %key.1, "claim changed meanwhile; not published");
                    continue;
                }
                r => r?,
            }
            debug!(namespace = %key.0, name = %key.1, phase = %obj.status.phase, "claim published");
            self.sent_claims
                .insert(key.clone(), (obj.clone(), Instant::now()));
        }
        for live in self.claims.state() {
            let key = (live.namespace().unwrap_or_default(), live.name_any());
            if want.claims.contains_key(&key) {
                continue;
            }
            self.sent_claims.remove(&key);
            if live.metadata.deletion_timestamp.is_some() {
                self.deletion(&live, None).await?;
                continue;
            }
            let id = format!("vipc/{}/{}", key.0, key.1);
            if self.deleted.contains_key(&id) || other_holder(&live, &self.options.node).is_some() {
                continue;
            }
            // A plain claim whose `VpcIP` went (this node deleted it, or
            // another one took its name): the garbage collector deletes it
            // with its owner; no write of this node's.
            if let Some((ip, uid)) = owning_ip(&live)
                && (self.deleted.contains_key(&format!("vip/{ip}"))
                    || self.ip_uid(&ip).as_deref() != Some(uid.as_str()))
            {
                self.deleted.insert(id, Instant::now());
                continue;
            }
            // A static claim the pool never held while this publisher ran
            // (an emptied or replaced store, a new instance under this
            // node's name): the object is the backup; the claim is rebuilt
            // from it, never deleted for it.
            let incoming_here = live
                .status
                .as_ref()
                .is_some_and(|st| want.arriving.contains(&st.ip));
            if !self.last.contains_key(&key)
                && !incoming_here
                && let Some(claim) = objects::claim_from_object(&live, &self.options.node)
            {
                match Arc::clone(&self.feed).restore(claim).await {
                    Ok(true) => {
                        info!(namespace = %key.0, name = %key.1, "static IP claim rebuilt from its object")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(namespace = %key.0, name = %key.1, error = %e.message, "cannot rebuild a static IP claim from its object; will retry")
                    }
                }
                continue;
            }
            // A claim this node took over and is moving here: the ADD
            // moving it finishes it (or resumes after a crash).
            if live
                .status
                .as_ref()
                .is_some_and(|s| s.claim_phase() == Some(crate::phase::ClaimPhase::Moving))
            {
                continue;
            }
            if let Some(was) = self.last.get(&key)
                && was.spec.delete_policy == DeletePolicy::Never
            {
                let why = match &was.status.expires_at {
                    Some(at)
                        if objects::parse_rfc3339(at).is_some_and(|t| t <= self.feed.now()) =>
                    {
                        format!(
                            "the static IP {} expired at {at} and was freed",
                            was.status.ip
                        )
                    }
                    _ => format!(
                        "the static IP {} was reclaimed on node {} and freed",
                        was.status.ip, self.options.node
                    ),
                };
                self.event(
                    &live.object_ref(&()),
                    EventType::Normal,
                    "Released",
                    "Release",
                    why,
                )
                .await;
            }
            let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), &key.0);
            // Only the version this node saw: a cache behind a take-over
            // must not delete the new holder's object.
            let mut params = DeleteParams::background();
            params.preconditions = Some(Preconditions {
                resource_version: live.resource_version(),
                uid: None,
            });
            match api.delete(&key.1, &params).await {
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                r => ignore_missing(r)?,
            }
            remove_finalizer(&api, &live).await?;
            self.deleted.insert(id, Instant::now());
        }
        Ok(())
    }

    /// The claim of `key` is held by node `holder` now: it leaves this
    /// node (outgoing, reserved until its address is gone from here).
    async fn leave(&mut self, key: &(String, String), holder: &str) {
        self.sent_claims.remove(key);
        match Arc::clone(&self.feed)
            .leave(key.0.clone(), key.1.clone(), holder.to_string())
            .await
        {
            Ok(true) => {
                debug!(namespace = %key.0, name = %key.1, node = %holder, "claim taken over by another node; outgoing here")
            }
            Ok(false) => {
                warn!(namespace = %key.0, name = %key.1, node = %holder, "claim object names another node while a sandbox here holds the pod's IP; not written back")
            }
            Err(e) => {
                warn!(namespace = %key.0, name = %key.1, error = %e.message, "cannot mark a claim taken over; will retry")
            }
        }
    }

    /// A claim object being deleted (`kubectl delete vipc`, its namespace
    /// or its owner going): its IP is freed first, which waits while the
    /// pod runs; then the finalizer goes and so does the object.
    async fn deletion(
        &mut self,
        live: &VpcIPClaim,
        want: Option<&ClaimObject>,
    ) -> Result<(), kube::Error> {
        let (ns, name) = (live.namespace().unwrap_or_default(), live.name_any());
        let api: Api<VpcIPClaim> = Api::namespaced(self.client.clone(), &ns);
        let uid = live.uid().unwrap_or_default();
        let reference = live.object_ref(&());
        match want {
            None => remove_finalizer(&api, live).await,
            Some(obj) if obj.bound() => {
                if self.deferred.insert(uid) {
                    let note = format!(
                        "pod {ns}/{name} still runs on node {} with {}; the IP is freed and the claim deleted when the pod ends",
                        self.options.node, obj.status.ip
                    );
                    info!(namespace = %ns, name = %name, "claim deletion deferred while its pod runs");
                    self.event(
                        &reference,
                        EventType::Normal,
                        "DeletionDeferred",
                        "Reclaim",
                        note,
                    )
                    .await;
                }
                Ok(())
            }
            Some(obj) => {
                match Arc::clone(&self.feed)
                    .reclaim(ns.clone(), name.clone())
                    .await
                {
                    Ok(Reclaimed::Done) => {
                        let note = format!(
                            "the claim was deleted; the static IP {} is freed",
                            obj.status.ip
                        );
                        self.event(&reference, EventType::Normal, "Reclaimed", "Reclaim", note)
                            .await;
                    }
                    Ok(Reclaimed::Deferred(why)) => {
                        if self.deferred.insert(uid) {
                            self.event(
                                &reference,
                                EventType::Normal,
                                "DeletionDeferred",
                                "Reclaim",
                                why,
                            )
                            .await;
                        }
                    }
                    Ok(Reclaimed::NotHeld) => remove_finalizer(&api, live).await?,
                    Err(e) => {
                        warn!(namespace = %ns, name = %name, error = %e.message, "cannot reclaim a deleted claim; will retry")
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::writes::owner_references;

    #[test]
    fn hole_4_a_claim_whose_owner_reference_was_taken_off_is_orphaned_not_written_back() {
        use crate::kube::crd::{Owner, VpcIPClaimStatus};
        let want = ClaimObject {
            spec: Default::default(),
            status: VpcIPClaimStatus {
                owner: Some(Owner {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                    uid: "u-old".into(),
                }),
                ..Default::default()
            },
        };
        let mut live = VpcIPClaim::new("web-0", Default::default());
        let lost = unreferenced_owner(&live, &want).expect("no reference carried");
        assert_eq!(lost.uid, "u-old");
        assert!(
            !was_written_with(&live, &lost),
            "never written with it: only a look-up of the owner tells"
        );
        live.status = Some(want.status.clone());
        assert!(was_written_with(&live, &lost), "written with it, now lost");
        // The re-created workload adopted the claim: its owner is not the
        // one the object was written with, so it is looked up (and found).
        let adopted = ClaimObject {
            status: VpcIPClaimStatus {
                owner: Some(Owner {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                    uid: "u-new".into(),
                }),
                ..Default::default()
            },
            ..want.clone()
        };
        let new = unreferenced_owner(&live, &adopted).expect("not written yet");
        assert!(!was_written_with(&live, &new), "adopted by a new owner");
        live.metadata.owner_references = owner_references(&want);
        assert_eq!(unreferenced_owner(&live, &want), None, "still owned");
        let unowned = ClaimObject {
            status: VpcIPClaimStatus::default(),
            ..want
        };
        live.metadata.owner_references = None;
        assert_eq!(unreferenced_owner(&live, &unowned), None, "never owned");
    }
}
