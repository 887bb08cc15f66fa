//! The VPC API's own limits, as Tencent Cloud documents them: a request
//! rate per action for one account (its sub-account and access region, all
//! callers together), and how many addresses one call may name. A request
//! over its action's rate is answered `RequestLimitExceeded`; the window is
//! the second the request arrived in ("每一秒钟的前20次请求都能成功", the
//! rate-limit page of the cloud API, cloud.tencent.com/document/product/1278/109059).
//!
//! Defaults (each action's API page, "默认接口请求频率限制"):
//!
//! | action | per second | page |
//! |---|---|---|
//! | `CreateNetworkInterface` | 100 | 215/15818 |
//! | `AttachNetworkInterface` | 50 | 215/15819 (the international site says 100) |
//! | `DetachNetworkInterface` | 50 | 215/15816 |
//! | `AssignPrivateIpAddresses` | 100 | 215/15813 |
//! | `UnassignPrivateIpAddresses` | 100 | 215/15814 |
//! | `DescribeNetworkInterfaces` | 100 | 215/15817 |
//! | `DescribeSubnets` | 100 | 215/15784 |
//! | `DescribeVpcTaskResult` | 20 | 215/59037 |
//! | `DescribeNetworkInterfaceLimit` | 20 | 215/38533 |
//! | `AssignIpv6CidrBlock`, `AssignIpv6SubnetCidrBlock` | 20 | |
//! | `AssignIpv6Addresses`, `UnassignIpv6Addresses` | 20 | |
//!
//! `DeleteNetworkInterface` and `MigratePrivateIpAddress` were not checked
//! and get 100. `PrivateIpAddresses` of `AssignPrivateIpAddresses` and
//! `UnassignPrivateIpAddresses` names at most 10 addresses ("单次最多指定10个");
//! a count (`SecondaryPrivateIpAddressCount`) is bounded only by the ENI's
//! quota of addresses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// The documented per-second rates, by action (the table above).
pub use tencent_api::DOCUMENTED_RATES;

/// How many addresses `PrivateIpAddresses` may name in one call.
pub const DOCUMENTED_MAX_ADDRESSES: usize = 10;

/// The limits an emulator enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Requests per second by action; an action not listed is not limited.
    pub rates: BTreeMap<String, u32>,
    /// Addresses one call may name.
    pub max_addresses: usize,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits::documented()
    }
}

impl ApiLimits {
    /// Tencent Cloud's documented limits.
    pub fn documented() -> ApiLimits {
        ApiLimits {
            rates: DOCUMENTED_RATES
                .iter()
                .map(|(a, r)| (a.to_string(), *r))
                .collect(),
            max_addresses: DOCUMENTED_MAX_ADDRESSES,
        }
    }

    /// No rate limit (the address limit stays: it is part of the API).
    pub fn unlimited() -> ApiLimits {
        ApiLimits {
            rates: BTreeMap::new(),
            max_addresses: DOCUMENTED_MAX_ADDRESSES,
        }
    }

    /// Parses `documented`, `off`, or `documented,Action=N,...` / `off,Action=N`
    /// (`Action=0` lifts that action's limit).
    pub fn parse(spec: &str) -> Result<ApiLimits, String> {
        let mut parts = spec.split(',').map(str::trim).filter(|p| !p.is_empty());
        let mut limits = match parts.next() {
            Some("documented") | None => ApiLimits::documented(),
            Some("off") => ApiLimits::unlimited(),
            Some(first) => {
                let mut l = ApiLimits::documented();
                l.set(first)?;
                l
            }
        };
        for p in parts {
            limits.set(p)?;
        }
        Ok(limits)
    }

    fn set(&mut self, pair: &str) -> Result<(), String> {
        let (action, rate) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected Action=N"))?;
        let rate: u32 = rate
            .parse()
            .map_err(|_| format!("{pair:?}: the rate is not a number"))?;
        if rate == 0 {
            self.rates.remove(action);
        } else {
            self.rates.insert(action.to_string(), rate);
        }
        Ok(())
    }
}

/// Calls and refusals of one action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ActionStats {
    /// Requests that reached the action (authenticated), throttled or not.
    pub calls: u64,
    /// Requests answered `RequestLimitExceeded` by the rate limit.
    pub throttled: u64,
}

/// The per-action, per-second windows of one account.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Action → (the second of its window, requests admitted in it).
    windows: Mutex<HashMap<String, (u64, u32)>>,
    stats: Mutex<BTreeMap<String, ActionStats>>,
}

impl RateLimiter {
    /// Whether a request for `action` arriving at `now_ms` (Unix ms) is
    /// admitted under `limits`; counts it either way.
    pub fn admit(&self, limits: &ApiLimits, action: &str, now_ms: u64) -> bool {
        let admitted = match limits.rates.get(action) {
            None => true,
            Some(&rate) => {
                let second = now_ms / 1000;
                let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
                let w = windows.entry(action.to_string()).or_insert((second, 0));
                if w.0 != second {
                    *w = (second, 0);
                }
                if w.1 < rate {
                    w.1 += 1;
                    true
                } else {
                    false
                }
            }
        };
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let s = stats.entry(action.to_string()).or_default();
        s.calls += 1;
        if !admitted {
            s.throttled += 1;
        }
        admitted
    }

    /// Calls and refusals so far, by action.
    pub fn stats(&self) -> BTreeMap<String, ActionStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_admits_the_first_n_requests_of_an_action() {
        let limits = ApiLimits::documented();
        let r = RateLimiter::default();
        let t0 = 1_700_000_000_000;
        let admitted = (0..30)
            .filter(|i| r.admit(&limits, "DescribeVpcTaskResult", t0 + i * 10))
            .count();
        assert_eq!(admitted, 20, "20 a second for DescribeVpcTaskResult");
        // Another action has its own budget in the same second.
        assert!(r.admit(&limits, "AssignPrivateIpAddresses", t0 + 400));
        // The next second starts afresh.
        assert!(r.admit(&limits, "DescribeVpcTaskResult", t0 + 1000));
        let stats = r.stats();
        assert_eq!(
            stats["DescribeVpcTaskResult"],
            ActionStats {
                calls: 31,
                throttled: 10
            }
        );
        assert_eq!(stats["AssignPrivateIpAddresses"].throttled, 0);
    }

    #[test]
    fn the_window_is_the_second_a_request_arrived_in() {
        let limits = ApiLimits::parse("off,AttachNetworkInterface=2").expect("spec");
        let r = RateLimiter::default();
        let t0 = 1_700_000_000_900;
        assert!(r.admit(&limits, "AttachNetworkInterface", t0));
        assert!(r.admit(&limits, "AttachNetworkInterface", t0 + 50));
        assert!(!r.admit(&limits, "AttachNetworkInterface", t0 + 99));
        // 100 ms later is a new second: not a sliding window.
        assert!(r.admit(&limits, "AttachNetworkInterface", t0 + 100));
        // Unlisted actions are not limited.
        assert!((0..1000).all(|_| r.admit(&limits, "DescribeVpcTaskResult", t0)));
    }

    #[test]
    fn specs() {
        assert_eq!(
            ApiLimits::parse("documented").expect("spec"),
            ApiLimits::documented()
        );
        let l = ApiLimits::parse("documented,DescribeVpcTaskResult=0,CreateNetworkInterface=7")
            .expect("spec");
        assert!(!l.rates.contains_key("DescribeVpcTaskResult"));
        assert_eq!(l.rates["CreateNetworkInterface"], 7);
        assert!(ApiLimits::parse("off").expect("spec").rates.is_empty());
        assert!(ApiLimits::parse("Foo").is_err());
        assert!(ApiLimits::parse("Foo=x").is_err());
    }
}
