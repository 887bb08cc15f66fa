//! The instances' CAM role, as a CVM instance's metadata service serves
//! it: `cam/security-credentials/` names the role, and
//! `cam/security-credentials/<role>` answers temporary credentials
//! (`TmpSecretId`, `TmpSecretKey`, `Token`, `ExpiredTime`, `Expiration`,
//! `Code`) for the instance asking. They are rotated: an instance asking
//! when less than a third of their lifetime is left gets new ones (the old
//! stay valid until they expire). The API accepts a temporary key only with
//! its token and before its expiry; otherwise it answers
//! `AuthFailure.TokenFailure`, and the caller fetches new ones.
//!
//! What the role may do is its policy ([`RolePolicy`]): every VPC action
//! (a cluster whose nodes call the VPC API themselves), or reads only (a
//! cluster whose cloud gateway does the writes for the nodes: a node's
//! credentials then change nothing), refused with `UnauthorizedOperation`
//! as CAM refuses what a policy does not grant.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use tencent_api::errors::Kind;

use super::ApiError;

/// The role every instance of a simulation carries.
pub const ROLE: &str = "vpc-cni-role";
/// How long temporary credentials are valid unless told otherwise.
pub const DEFAULT_LIFETIME_SECS: u64 = 2 * 60 * 60;

/// What the instances' role is granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RolePolicy {
    /// Every VPC action.
    #[default]
    Full,
    /// `Describe*` only.
    ReadOnly,
}

impl RolePolicy {
    /// Whether the role may call `action`.
    pub fn grants(self, action: &str) -> bool {
        self == RolePolicy::Full || action.starts_with("Describe")
    }
}

/// One set of temporary credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Issued {
    secret_key: String,
    token: String,
    /// Unix seconds.
    issued: u64,
    expires: u64,
    instance: String,
}

/// The issued temporary credentials, by `TmpSecretId`.
#[derive(Debug)]
pub struct Cam {
    lifetime_secs: u64,
    /// What the role may do.
    pub policy: RolePolicy,
    issued: Mutex<HashMap<String, Issued>>,
}

impl Cam {
    /// Credentials valid for `lifetime_secs` (at least 3 s).
    pub fn new(lifetime_secs: u64) -> Cam {
        Cam {
            lifetime_secs: lifetime_secs.max(3),
            policy: RolePolicy::Full,
            issued: Mutex::default(),
        }
    }

    /// The metadata service's answer under `cam/security-credentials/`
    /// (`key` is what follows it) for `instance` at `now` (Unix seconds).
    pub fn metadata(&self, key: &str, instance: &str, now: u64) -> Option<String> {
        match key {
            "" => Some(ROLE.to_string()),
            ROLE => Some(self.credentials(instance, now).to_string()),
            _ => None,
        }
    }

    /// The instance's current credentials, new ones when less than a third
    /// of the lifetime of the newest is left.
    fn credentials(&self, instance: &str, now: u64) -> Value {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        // Expired ones are kept an hour, to be refused by name.
        issued.retain(|_, c| c.expires + self.lifetime_secs.max(3600) > now);
        let fresh = issued
            .iter()
            .filter(|(_, c)| c.instance == instance)
            .max_by_key(|(_, c)| c.issued)
            .filter(|(_, c)| c.expires.saturating_sub(now) * 3 > self.lifetime_secs)
            .map(|(id, c)| (id.clone(), c.clone()));
        let (id, c) = fresh.unwrap_or_else(|| {
            let n = issued.len() as u64 + now;
            let id = format!("AKIDtmp{:016x}", random(n));
            let c = Issued {
                secret_key: format!("{:032x}", random(n ^ 0x5eed) as u128 * 0x1_0000_0001),
                token: format!("token-{:024x}", random(n ^ 0x70ce)),
                issued: now,
                expires: now + self.lifetime_secs,
                instance: instance.to_string(),
            };
            issued.insert(id.clone(), c.clone());
            (id, c)
        });
        json!({
            "TmpSecretId": id,
            "TmpSecretKey": c.secret_key,
            "Token": c.token,
            "ExpiredTime": c.expires,
            "Expiration": tencent_api::sign::utc_datetime(c.expires).replace(' ', "T") + "Z",
            "Code": "Success",
        })
    }

    /// The secret key of temporary credentials `secret_id`, when they
    /// exist; refused with `AuthFailure.TokenFailure` without their token
    /// or after their expiry. `None`: not a temporary key.
    pub fn verify(
        &self,
        secret_id: &str,
        token: Option<&str>,
        now: u64,
    ) -> Option<Result<String, ApiError>> {
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let c = issued.get(secret_id)?;
        Some(if c.expires <= now {
            Err(ApiError::new(
                Kind::TokenFailure,
                "the temporary credentials have expired; fetch new ones from the metadata service",
            ))
        } else if token != Some(c.token.as_str()) {
            Err(ApiError::new(
                Kind::TokenFailure,
                "the token of the temporary credentials is missing or wrong",
            ))
        } else {
            Ok(c.secret_key.clone())
        })
    }
}

/// A value that looks random enough for credentials of a simulation
/// (splitmix64 of `seed` and the process's clock).
fn random(seed: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = seed ^ nanos ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(v: &Value, k: &str) -> String {
        match &v[k] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    #[test]
    fn credentials_are_rotated_before_they_expire_and_refused_after() {
        let cam = Cam::new(300);
        assert_eq!(cam.metadata("", "ins-1", 1000).as_deref(), Some(ROLE));
        let first: Value =
            serde_json::from_str(&cam.metadata(ROLE, "ins-1", 1000).expect("creds")).expect("json");
        assert_eq!(field(&first, "Code"), "Success");
        assert_eq!(field(&first, "ExpiredTime"), "1300");
        let id = field(&first, "TmpSecretId");
        let token = field(&first, "Token");
        // Asked again early: the same ones.
        let again: Value =
            serde_json::from_str(&cam.metadata(ROLE, "ins-1", 1150).expect("creds")).expect("json");
        assert_eq!(field(&again, "TmpSecretId"), id);
        // With less than a third left: new ones; the old stay valid.
        let rotated: Value =
            serde_json::from_str(&cam.metadata(ROLE, "ins-1", 1250).expect("creds")).expect("json");
        assert_ne!(field(&rotated, "TmpSecretId"), id);
        assert_eq!(
            cam.verify(&id, Some(&token), 1299).map(|r| r.is_ok()),
            Some(true)
        );
        // Expired, or without the token: refused; unknown: not temporary.
        let expired = cam.verify(&id, Some(&token), 1300).expect("known");
        assert_eq!(expired.expect_err("expired").kind, Kind::TokenFailure);
        let rotated_id = field(&rotated, "TmpSecretId");
        let tokenless = cam.verify(&rotated_id, None, 1260).expect("known");
        assert_eq!(tokenless.expect_err("no token").kind, Kind::TokenFailure);
        assert!(cam.verify("AKIDlongterm", None, 1000).is_none());
        // Each instance has its own.
        let other: Value =
            serde_json::from_str(&cam.metadata(ROLE, "ins-2", 1250).expect("creds")).expect("json");
        assert_ne!(field(&other, "TmpSecretId"), rotated_id);
        assert!(cam.metadata("another-role", "ins-1", 1000).is_none());
    }
}
