//! ADD results: what the plugin prints, shaped for the caller's
//! `cniVersion`, and merged into `prevResult` when chained.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::CniVersion;

/// DNS settings of a result (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// An interface of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// The interface name.
    pub name: String,
    /// Its MAC address.
    pub mac: Option<String>,
    /// Its MTU (printed from 1.1.0 on).
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; `None` on the host.
    pub sandbox: Option<String>,
}

/// An address of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// The address in CIDR form, such as `10.0.1.5/32`.
    pub address: String,
    /// The gateway.
    pub gateway: Option<String>,
    /// Index into this result's own `interfaces`.
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination in CIDR form.
    pub dst: String,
    /// Next hop.
    pub gw: Option<String>,
}

/// The result of one plugin's ADD.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces created.
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes added in the container.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

impl CniResult {
    /// This result as JSON in `version`'s shape, appended to `prev` (the
    /// chain's `prevResult`) if there is one. Entries of `prev` are kept
    /// verbatim; our `ips[].interface` indexes are shifted past its
    /// interfaces.
    pub fn to_json(&self, version: CniVersion, prev: Option<&Value>) -> Value {
        let mut out = match prev {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        out.insert("cniVersion".into(), json!(version.as_str()));
        let offset = array_mut(&mut out, "interfaces").len();
        for i in &self.interfaces {
            let mut o = Map::new();
            o.insert("name".into(), json!(i.name));
            if let Some(mac) = &i.mac {
                o.insert("mac".into(), json!(mac));
            }
            if let (Some(mtu), true) = (i.mtu, version.interfaces_carry_mtu()) {
                o.insert("mtu".into(), json!(mtu));
            }
            if let Some(sandbox) = &i.sandbox {
                o.insert("sandbox".into(), json!(sandbox));
            }
            array_mut(&mut out, "interfaces").push(Value::Object(o));
        }
        for ip in &self.ips {
            let mut o = Map::new();
            if version.ips_carry_version() {
                let family = if ip.address.contains(':') { "6" } else { "4" };
                o.insert("version".into(), json!(family));
            }
            o.insert("address".into(), json!(ip.address));
            if let Some(gw) = &ip.gateway {
                o.insert("gateway".into(), json!(gw));
            }
            if let Some(idx) = ip.interface {
                o.insert("interface".into(), json!(idx + offset));
            }
            array_mut(&mut out, "ips").push(Value::Object(o));
        }
        for r in &self.routes {
            let mut o = Map::new();
            o.insert("dst".into(), json!(r.dst));
            if let Some(gw) = &r.gw {
                o.insert("gw".into(), json!(gw));
            }
            array_mut(&mut out, "routes").push(Value::Object(o));
        }
        if !self.dns.is_empty()
            && out
                .get("dns")
                .is_none_or(|d| d.as_object().is_none_or(Map::is_empty))
        {
            out.insert("dns".into(), json!(self.dns));
        }
        for key in ["interfaces", "ips", "routes"] {
            if out
                .get(key)
                .is_some_and(|v| v.as_array().is_some_and(Vec::is_empty))
            {
                out.remove(key);
            }
        }
        out.entry("dns").or_insert_with(|| json!({}));
        Value::Object(out)
    }
}

/// The addresses a result assigns to the interface `ifname` inside
/// `sandbox`: what CHECK compares against the agent's allocation.
pub fn addresses_of(result: &Value, ifname: &str, sandbox: &str) -> Vec<String> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let ours: Vec<usize> = interfaces
        .map(|list| {
            list.iter()
                .enumerate()
                .filter(|(_, i)| {
                    i.get("name").and_then(Value::as_str) == Some(ifname)
                        && i.get("sandbox").and_then(Value::as_str) == Some(sandbox)
                })
                .map(|(idx, _)| idx)
                .collect()
        })
        .unwrap_or_default();
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter(|ip| {
                    ip.get("interface")
                        .and_then(Value::as_u64)
                        .is_some_and(|i| ours.contains(&(i as usize)))
                })
                .filter_map(|ip| {
                    ip.get("address")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn array_mut<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = m.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => a,
        _ => unreachable!("slot was just made an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vpc1234".into(),
                    mac: Some("aa:bb:cc:00:00:01".into()),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/p1".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.1.5/32".into(),
                gateway: Some("169.254.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn legacy_versions_carry_ip_version() {
        let v = sample().to_json(CniVersion::V0_4_0, None);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn v1_drops_ip_version_and_v1_1_adds_mtu() {
        let v = sample().to_json(CniVersion::V1_0_0, None);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][1].get("mtu").is_none());
        let v = sample().to_json(CniVersion::V1_1_0, None);
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/p1");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["dns"], json!({}));
    }

    #[test]
    fn chained_result_keeps_prev_and_shifts_indexes() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0", "sandbox": "/x", "custom": true}],
            "ips": [{"address": "192.168.0.2/24", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let v = sample().to_json(CniVersion::V1_0_0, Some(&prev));
        assert_eq!(v["interfaces"].as_array().expect("array").len(), 3);
        assert_eq!(v["interfaces"][0]["custom"], true);
        assert_eq!(v["ips"][0]["address"], "192.168.0.2/24");
        assert_eq!(v["ips"][1]["interface"], 2);
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn addresses_of_finds_our_interface_only() {
        let v = sample().to_json(CniVersion::V1_0_0, None);
        assert_eq!(
            addresses_of(&v, "eth0", "/var/run/netns/p1"),
            vec!["10.0.1.5/32"]
        );
        assert!(addresses_of(&v, "eth0", "/other").is_empty());
        assert!(addresses_of(&json!({}), "eth0", "/x").is_empty());
    }
}
