//! A dataplane that touches nothing and records every call, keeping the
//! set of wired pods so CHECK and DEL behave as on a real host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::{Dataplane, DataplaneError, Egress, PodLinks, PodSpec, derived_mac, host_ifname};
use crate::ipam::EniRecord;

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// `program_eni(id)`.
    ProgramEni(String),
    /// `attach_pod(host ifname, ip)`.
    Attach(String, std::net::Ipv4Addr),
    /// `detach_pod(host ifname)`.
    Detach(String),
    /// `program_egress()` with the configured egress.
    ProgramEgress(Egress),
}

/// The recording fake.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    calls: Mutex<Vec<Recorded>>,
    pods: Mutex<HashMap<String, PodSpec>>,
    /// When set, `attach_pod` fails.
    pub fail_attach: AtomicBool,
    /// When set, `program_eni` fails.
    pub fail_program_eni: AtomicBool,
    /// The MTU `program_eni` finds on every ENI's link (0: the record's).
    pub eni_mtu: AtomicU32,
    /// The configured egress.
    egress: Egress,
    /// The egress "in the kernel": what the last `program_egress` set.
    programmed_egress: Mutex<Option<Egress>>,
    /// Host veths whose sandbox's namespace was removed without a DEL.
    vanished: Mutex<Vec<String>>,
}

impl FakeDataplane {
    /// A fake whose `program_egress` programs `egress`.
    pub fn with_egress(egress: Egress) -> FakeDataplane {
        FakeDataplane {
            egress,
            ..FakeDataplane::default()
        }
    }

    /// The sandbox of `container_id`/`ifname` is removed without a DEL (a
    /// runtime that gave up on it): its veth goes with its namespace.
    #[cfg(test)]
    pub fn vanish(&self, container_id: &str, ifname: &str) {
        let name = host_ifname(container_id, ifname);
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        self.vanished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name);
    }

    /// Forgets the programmed egress, as a flushed ruleset would.
    #[cfg(test)]
    pub fn lose_egress(&self) {
        *self
            .programmed_egress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Every call so far.
    #[cfg(test)]
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Host ifnames of the pods currently wired.
    #[cfg(test)]
    pub fn wired(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn record(&self, call: Recorded) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

impl Dataplane for FakeDataplane {
    async fn program_eni(&self, eni: &EniRecord) -> Result<u32, DataplaneError> {
        self.record(Recorded::ProgramEni(eni.id.clone()));
        if self.fail_program_eni.load(Ordering::SeqCst) {
            return Err(DataplaneError::Kernel {
                op: "ip link show",
                detail: "injected: no link with that MAC".into(),
            });
        }
        Ok(match self.eni_mtu.load(Ordering::SeqCst) {
            0 => eni.mtu,
            mtu => mtu,
        })
    }

    async fn attach_pod(&self, pod: &PodSpec) -> Result<PodLinks, DataplaneError> {
        let name = host_ifname(&pod.key.container_id, &pod.key.ifname);
        self.record(Recorded::Attach(name.clone(), pod.ip));
        if self.fail_attach.load(Ordering::SeqCst) {
            return Err(DataplaneError::Kernel {
                op: "ip link add",
                detail: "injected failure".into(),
            });
        }
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), pod.clone());
        Ok(PodLinks {
            host_mac: derived_mac(&[name.as_bytes(), b"host"]),
            pod_mac: derived_mac(&[name.as_bytes(), b"pod"]),
            host_ifname: name,
        })
    }

    async fn check_pod(&self, pod: &PodSpec) -> Result<(), DataplaneError> {
        let name = host_ifname(&pod.key.container_id, &pod.key.ifname);
        match self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
        {
            Some(wired) if wired.ip == pod.ip => Ok(()),
            Some(wired) => Err(DataplaneError::Mismatch {
                pod: pod.key.to_string(),
                what: "address",
                detail: format!("{} wired with {}, expected {}", name, wired.ip, pod.ip),
            }),
            None => Err(DataplaneError::Mismatch {
                pod: pod.key.to_string(),
                what: "veth",
                detail: format!("{name} does not exist"),
            }),
        }
    }

    async fn vanished(&self, pods: &[PodSpec]) -> Result<Vec<PodSpec>, DataplaneError> {
        let gone = self.vanished.lock().unwrap_or_else(|p| p.into_inner());
        Ok(pods
            .iter()
            .filter(|p| gone.contains(&host_ifname(&p.key.container_id, &p.key.ifname)))
            .cloned()
            .collect())
    }

    async fn collect_garbage(&self, keep: &[PodSpec]) -> Result<u32, DataplaneError> {
        let keep: Vec<String> = keep
            .iter()
            .map(|p| host_ifname(&p.key.container_id, &p.key.ifname))
            .collect();
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let before = pods.len();
        pods.retain(|name, _| keep.contains(name));
        Ok((before - pods.len()) as u32)
    }

    async fn program_egress(&self) -> Result<(), DataplaneError> {
        self.record(Recorded::ProgramEgress(self.egress.clone()));
        *self
            .programmed_egress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(self.egress.clone());
        Ok(())
    }

    async fn check_egress(&self) -> Result<(), DataplaneError> {
        // The connmark is there whatever the egress: even "off" must have
        // been programmed.
        let programmed = self
            .programmed_egress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match programmed {
            Some(e) if e == self.egress => Ok(()),
            other => Err(DataplaneError::Mismatch {
                pod: "the node".into(),
                what: "egress masquerade and connmark",
                detail: format!("programmed {other:?}, expected {}", self.egress),
            }),
        }
    }

    async fn detach_pod(&self, pod: &PodSpec) -> Result<(), DataplaneError> {
        let name = host_ifname(&pod.key.container_id, &pod.key.ifname);
        self.record(Recorded::Detach(name.clone()));
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        Ok(())
    }
}
