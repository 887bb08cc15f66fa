//! The node's identity (instance, zone, VPC, region) and its primary ENI's
//! MAC, as the metadata service gave them, kept beside the store
//! (`identity.json` in the state directory): an agent restarted while the
//! metadata service does not answer starts from what it knew, and serves
//! DEL, CHECK and STATUS from its store as it would with the VPC API down.
//! Flags always win over what is kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cloud::tencent::Identity;

/// What is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// Instance id.
    pub instance_id: String,
    /// Availability zone.
    pub zone: String,
    /// VPC id.
    pub vpc_id: String,
    /// Region.
    pub region: String,
    /// The primary ENI's MAC, once asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_mac: Option<String>,
}

impl Known {
    /// `flags` with every blank field filled from what is kept.
    pub fn fill(&self, flags: Identity) -> Identity {
        let or = |flag: String, kept: &str| {
            if flag.is_empty() {
                kept.to_string()
            } else {
                flag
            }
        };
        Identity {
            instance_id: or(flags.instance_id, &self.instance_id),
            zone: or(flags.zone, &self.zone),
            vpc_id: or(flags.vpc_id, &self.vpc_id),
            region: or(flags.region, &self.region),
        }
    }
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.json")
}

/// What the state directory keeps, if anything readable.
pub fn kept(state_dir: &Path) -> Option<Known> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps `known` (written aside and renamed, so a crash leaves the old or
/// the new file, never half of one). A failure is the caller's to log.
pub fn keep(state_dir: &Path, known: &Known) -> std::io::Result<()> {
    let tmp = state_dir.join("identity.json.tmp");
    let bytes = serde_json::to_vec_pretty(known).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path(state_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_fills_only_what_the_flags_leave_blank_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(kept(dir.path()), None, "nothing yet");
        let known = Known {
            instance_id: "ins-1".into(),
            zone: "ap-guangzhou-3".into(),
            vpc_id: "vpc-1".into(),
            region: "ap-guangzhou".into(),
            primary_mac: Some("52:54:00:12:34:56".into()),
        };
        keep(dir.path(), &known).expect("keep");
        let back = kept(dir.path()).expect("kept");
        assert_eq!(back, known);
        let filled = back.fill(Identity {
            zone: "flagged".into(),
            ..Identity::default()
        });
        assert_eq!(
            (filled.instance_id.as_str(), filled.zone.as_str()),
            ("ins-1", "flagged")
        );
        std::fs::write(path(dir.path()), b"{not json").expect("corrupt");
        assert_eq!(kept(dir.path()), None, "an unreadable file is no identity");
    }
}
