//! The CNI specification versions this project speaks.

use std::fmt;

/// A CNI specification version understood by `vpc-cni`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: results as in 0.4.0, no CHECK.
    V0_3_0,
    /// 0.3.1: results as in 0.4.0, no CHECK.
    V0_3_1,
    /// 0.4.0: adds CHECK; `ips[].version` still present.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds GC, STATUS and interface `mtu`.
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest version, used where no configuration names one.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version string as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a version string; `None` for any version we do not speak.
    pub fn parse(s: &str) -> Option<CniVersion> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// CHECK exists from 0.4.0 on.
    pub fn allows_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn allows_gc_and_status(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Interface `mtu` in results exists from 1.1.0 on.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// The answer to the VERSION command.
    pub fn version_info_json() -> String {
        let versions: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
        serde_json::json!({
            "cniVersion": CniVersion::LATEST.as_str(),
            "supportedVersions": versions,
        })
        .to_string()
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_nothing_else() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        for bad in ["", "0.2.0", "1.2.0", "1.1", "v1.1.0"] {
            assert_eq!(CniVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn verbs_follow_the_spec_history() {
        assert!(!CniVersion::V0_3_1.allows_check());
        assert!(CniVersion::V0_4_0.allows_check());
        assert!(!CniVersion::V1_0_0.allows_gc_and_status());
        assert!(CniVersion::V1_1_0.allows_gc_and_status());
    }

    #[test]
    fn version_info_lists_the_required_versions() {
        let v: serde_json::Value =
            serde_json::from_str(&CniVersion::version_info_json()).expect("json");
        let list = v["supportedVersions"].as_array().expect("array");
        for required in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(list.iter().any(|x| x == required), "{required}");
        }
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}
