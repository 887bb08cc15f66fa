//! Dual stack: every secondary IP of an ENI gets an IPv6 partner from the
//! ENI's subnet's /64 (`AssignIpv6Addresses`, one call per ENI for all it
//! lacks), and the pod holding the IP holds its partner. The partners are
//! made durable with the ENI's record after the cloud call (a commit that
//! fails gives them back; an answer lost in between is found by looking at
//! the ENI, as for IPv4); addresses beyond the IPs that need one are given
//! back at once.

use std::net::Ipv6Addr;

use proto::wire::AgentError;
use tracing::{info, warn};

use super::Agent;
use super::errors::{cloud_error, internal};
use crate::cloud::Cloud;
use crate::dataplane::Dataplane;
use crate::ipam::Change;

impl<C: Cloud, D: Dataplane> Agent<C, D> {
    /// Gives the secondary IPs of every ENI that lack an IPv6 partner one
    /// (nothing unless the agent is dual-stack). Returns how many got one.
    /// Also gives back what the last reconciliation found on the ENIs
    /// beyond the partners. Serialised with growth: no assignment is in
    /// flight while strays are told from partners.
    pub(super) async fn pair_ipv6(&self) -> Result<usize, AgentError> {
        if !self.config.ipv6 {
            return Ok(0);
        }
        let _serialised = self.grow_lock.lock().await;
        self.give_back_strays().await;
        let wanting: Vec<String> = self.txn.read(|ipam, _| {
            ipam.enis()
                .iter()
                .filter(|e| !e.unpaired().is_empty())
                .map(|e| e.id.clone())
                .collect()
        });
        let mut paired = 0;
        for eni_id in wanting {
            paired += self.pair_eni_ipv6(&eni_id).await?;
        }
        Ok(paired)
    }

    /// [`pair_ipv6`](Self::pair_ipv6) for one ENI.
    pub(super) async fn pair_eni_ipv6(&self, eni_id: &str) -> Result<usize, AgentError> {
        if !self.config.ipv6 {
            return Ok(0);
        }
        self.txn.ensure_healthy()?;
        let Some((count, held)) = self.txn.read(|ipam, _| {
            ipam.eni(eni_id).map(|e| {
                let held: Vec<Ipv6Addr> = e.ipv6.iter().map(|(_, v6)| *v6).collect();
                (e.unpaired().len() as u32, held)
            })
        }) else {
            return Ok(0);
        };
        if count == 0 {
            return Ok(0);
        }
        let new = self
            .cloud
            .assign_ipv6s(eni_id, count, &held)
            .await
            .map_err(cloud_error)?;
        let (id, got) = (eni_id.to_string(), new.clone());
        let committed = self
            .txn
            .commit(move |ipam, _| {
                let mut record = ipam
                    .eni(&id)
                    .cloned()
                    .ok_or_else(|| internal(format!("ENI {id} left the pool")))?;
                let had_own = record.own_ipv6().is_some();
                let left = record.pair_ipv6(&got);
                let own_now = (!had_own && record.own_ipv6().is_some()).then(|| record.clone());
                Ok((vec![Change::PutEni(record)], (left, own_now)))
            })
            .await;
        let left = match committed {
            Ok((left, own_now)) => {
                if let Some(record) = own_now
                    && let Err(e) = self.dataplane.program_eni(&record).await
                {
                    warn!(eni = %eni_id, error = %e, "cannot put the ENI's own IPv6 address on its link; tried again at the next start");
                }
                left
            }
            Err(e) => {
                // Unknown to the store: given back rather than leaked
                // (unless poisoned: the restart finds them on the ENI).
                if self.txn.poisoned().is_none() {
                    self.give_back_ipv6(eni_id, &new).await;
                }
                return Err(e);
            }
        };
        // The ENI's IPs went meanwhile (a shrink): what no IP needs goes.
        self.give_back_ipv6(eni_id, &left).await;
        let paired = new.len() - left.len();
        info!(eni = %eni_id, count = paired, "assigned IPv6 partners");
        Ok(paired)
    }

    /// Gives back the strays the last reconciliation found that are still
    /// nobody's partner.
    async fn give_back_strays(&self) {
        let strays =
            std::mem::take(&mut *self.stray_ipv6.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_eni: std::collections::BTreeMap<String, Vec<Ipv6Addr>> = Default::default();
        self.txn.read(|ipam, _| {
            for (eni, v6) in strays {
                // An ENI gone from the pool meanwhile took its addresses.
                if ipam
                    .eni(&eni)
                    .is_some_and(|e| !e.ipv6.iter().any(|(_, p)| *p == v6))
                {
                    by_eni.entry(eni).or_default().push(v6);
                }
            }
        });
        for (eni, ips) in by_eni {
            warn!(eni = %eni, count = ips.len(), "IPv6 addresses on the ENI that no IP needs; given back");
            self.give_back_ipv6(&eni, &ips).await;
        }
    }

    /// `UnassignIpv6Addresses`; a failure is logged (the addresses stay on
    /// the ENI until the next reconciliation finds them).
    pub(super) async fn give_back_ipv6(&self, eni_id: &str, ips: &[Ipv6Addr]) {
        if ips.is_empty() {
            return;
        }
        match self.cloud.unassign_ipv6s(eni_id, ips).await {
            Ok(()) => info!(eni = %eni_id, count = ips.len(), "gave back IPv6 addresses"),
            Err(e) => {
                warn!(eni = %eni_id, error = %e, "could not unassign IPv6 addresses; found again at the next reconciliation")
            }
        }
    }
}
