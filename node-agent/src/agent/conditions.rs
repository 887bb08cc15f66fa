//! Conditions of the node's pool: set when the cloud refuses for a reason
//! an operator must act on, cleared when it stops, kept with the time they
//! began. Shown by `pool` and STATUS; the cluster's events follow them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tracing::{info, warn};

use crate::ipam::UnixMillis;

/// Condition: the VPC's ENI quota is used up.
pub const ENI_LIMIT: &str = "ENILimit";
/// Condition: no subnet of the node's zone may be used.
pub const NO_SUBNET_IN_ZONE: &str = "NoSubnetInZone";
/// Condition: the VPC API does not answer (or refuses the credentials).
pub const CLOUD_UNREACHABLE: &str = "CloudUnreachable";

/// The conditions the node is in: kind → (message, since).
#[derive(Debug, Default)]
pub struct Conditions(Mutex<BTreeMap<&'static str, (String, UnixMillis)>>);

impl Conditions {
    /// Records a condition (kept with its first time until cleared).
    pub fn set(&self, kind: &'static str, message: &str, now: UnixMillis) {
        let mut c = self.lock();
        let entry = c.entry(kind).or_insert_with(|| (String::new(), now));
        if entry.0 != message {
            warn!(condition = kind, message, "condition");
            entry.0 = message.to_string();
        }
    }

    /// Clears a condition.
    pub fn clear(&self, kind: &'static str) {
        if self.lock().remove(kind).is_some() {
            info!(condition = kind, "condition cleared");
        }
    }

    /// One condition, if set.
    pub fn get(&self, kind: &'static str) -> Option<(String, UnixMillis)> {
        self.lock().get(kind).cloned()
    }

    /// Every condition, by kind.
    pub fn all(&self) -> BTreeMap<&'static str, (String, UnixMillis)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, (String, UnixMillis)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_first_time_until_cleared() {
        let c = Conditions::default();
        c.set(ENI_LIMIT, "quota", 10);
        c.set(ENI_LIMIT, "quota again", 20);
        assert_eq!(c.get(ENI_LIMIT), Some(("quota again".into(), 10)));
        c.clear(ENI_LIMIT);
        assert_eq!(c.get(ENI_LIMIT), None);
        c.set(ENI_LIMIT, "quota", 30);
        assert_eq!(c.get(ENI_LIMIT).map(|x| x.1), Some(30));
    }
}
