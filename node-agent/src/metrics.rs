//! Prometheus metrics in the text exposition format, written by hand (no
//! client library): cloud calls and errors by action and code (calls that
//! got no answer as code `Unreachable`), throttled calls, how long
//! asynchronous tasks took to confirm, the pool's IPs by state, each pod's
//! time to network by phase, the free addresses of the subnets the node may
//! take ENIs from, and ENI creations refused for the VPC's ENI quota (the
//! `ENILimit` condition). Served on `--metrics-address` (off by default) at
//! any path, one request per connection, by the agent and by the cluster
//! component (its sweeps' and its gateway's calls; no pool of its own).
//! `deploy/monitoring/` has a dashboard and alerts built on these names.
//!
//! The counters are process-wide (one agent per process; a simulation of
//! many agents in one process sums them).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds of the histograms, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Counts per bucket (not cumulative), plus one for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// The code of a call that got no answer (not sent, no connection, no
/// response in time): the VPC API, or the cloud gateway in front of it,
/// could not be reached. An alert on it (`rate(...{code="Unreachable"})`
/// with no other answer) only fires while calls are being made, so an idle
/// node does not look cut off.
pub const UNREACHABLE: &str = "Unreachable";

/// Every metric family the exposition has, sample names (the `_bucket`,
/// `_sum` and `_count` of histograms) not included: what dashboards and
/// alerts may name.
pub const FAMILIES: &[&str] = &[
    "vpc_cni_pool_ips",
    "vpc_cni_subnet_free_ips",
    "vpc_cni_eni_limit_total",
    "vpc_cni_cloud_calls_total",
    "vpc_cni_cloud_throttled_total",
    "vpc_cni_cloud_task_seconds",
    "vpc_cni_add_seconds",
];

#[derive(Debug, Default)]
struct Registry {
    /// (action, code) → calls; code `OK` for an answer without error.
    calls: BTreeMap<(String, String), u64>,
    /// action → calls answered `RequestLimitExceeded`.
    throttled: BTreeMap<String, u64>,
    /// action → how long its tasks took to confirm.
    task_wait: BTreeMap<String, Histogram>,
    /// phase → time to network of pods.
    add: BTreeMap<&'static str, Histogram>,
    /// (subnet, zone) → free addresses, as `DescribeSubnets` last said.
    subnet_free: BTreeMap<(String, String), u64>,
    /// ENI creations refused for the VPC's ENI quota.
    eni_limit: u64,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// `value` as a label value: backslash, double quote and line feed escaped.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Registry::default))
}

/// One answer of the VPC API: `code` is the error code, `None` for success.
pub fn cloud_call(action: &str, code: Option<&str>) {
    with(|r| {
        *r.calls
            .entry((action.to_string(), code.unwrap_or("OK").to_string()))
            .or_default() += 1;
        if code == Some("RequestLimitExceeded") {
            *r.throttled.entry(action.to_string()).or_default() += 1;
        }
    });
}

/// An asynchronous `action` confirmed done after `waited`.
pub fn task_confirmed(action: &str, waited: Duration) {
    with(|r| {
        r.task_wait
            .entry(action.to_string())
            .or_default()
            .observe(waited.as_secs_f64())
    });
}

/// `DescribeSubnets` said `subnet` (of `zone`), one the node may take ENIs
/// from, has `free` addresses left.
pub fn subnet_free_ips(subnet: &str, zone: &str, free: u64) {
    with(|r| {
        r.subnet_free
            .insert((subnet.to_string(), zone.to_string()), free)
    });
}

/// The cloud refused to create an ENI: the VPC's ENI quota is used up (the
/// node's `ENILimit` condition and event).
pub fn eni_limit() {
    with(|r| r.eni_limit += 1);
}

/// A pod's ADD by phase: `queue` (until it may take an IP: the GC lock,
/// the pod's annotations, its claim checked), `ip` (until its IP was
/// reserved, growth of the pool included), `cloud` (of which growing the
/// pool through the VPC API; zero when an IP was free), `kernel` (wiring
/// the pod), `wire` (the kernel work and the commit, side by side, and a
/// static claim made known) or `total`.
pub fn add_phase(phase: &'static str, took: Duration) {
    with(|r| r.add.entry(phase).or_default().observe(took.as_secs_f64()));
}

/// The exposition of everything recorded, plus the pool's IPs by state
/// (`pool`: state → count).
pub fn render(pool: &BTreeMap<&'static str, usize>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP vpc_cni_pool_ips IPs of the node's secondary ENIs by state.\n# TYPE vpc_cni_pool_ips gauge"
    );
    for (state, n) in pool {
        let _ = writeln!(out, "vpc_cni_pool_ips{{state=\"{state}\"}} {n}");
    }
    with(|r| {
        let _ = writeln!(
            out,
            "# HELP vpc_cni_subnet_free_ips Free addresses of the subnets the node may take ENIs from, as DescribeSubnets last said (at start and every reconcile).\n# TYPE vpc_cni_subnet_free_ips gauge"
        );
        for ((subnet, zone), n) in &r.subnet_free {
            let _ = writeln!(
                out,
                "vpc_cni_subnet_free_ips{{subnet=\"{}\",zone=\"{}\"}} {n}",
                escaped(subnet),
                escaped(zone)
            );
        }
        let _ = writeln!(
            out,
            "# HELP vpc_cni_eni_limit_total ENI creations refused because the VPC's ENI quota is used up (the ENILimit condition).\n# TYPE vpc_cni_eni_limit_total counter\nvpc_cni_eni_limit_total {}",
            r.eni_limit
        );
        let _ = writeln!(
            out,
            "# HELP vpc_cni_cloud_calls_total VPC API calls by action and answer code (OK: no error; Unreachable: no answer came).\n# TYPE vpc_cni_cloud_calls_total counter"
        );
        for ((action, code), n) in &r.calls {
            let _ = writeln!(
                out,
                "vpc_cni_cloud_calls_total{{action=\"{}\",code=\"{}\"}} {n}",
                escaped(action),
                escaped(code)
            );
        }
        let _ = writeln!(
            out,
            "# HELP vpc_cni_cloud_throttled_total VPC API calls answered RequestLimitExceeded.\n# TYPE vpc_cni_cloud_throttled_total counter"
        );
        for (action, n) in &r.throttled {
            let _ = writeln!(
                out,
                "vpc_cni_cloud_throttled_total{{action=\"{}\"}} {n}",
                escaped(action)
            );
        }
        let _ = writeln!(
            out,
            "# HELP vpc_cni_cloud_task_seconds How long asynchronous VPC API calls took to confirm.\n# TYPE vpc_cni_cloud_task_seconds histogram"
        );
        for (action, h) in &r.task_wait {
            h.render(
                &mut out,
                "vpc_cni_cloud_task_seconds",
                &format!("action=\"{}\"", escaped(action)),
            );
        }
        let _ = writeln!(
            out,
            "# HELP vpc_cni_add_seconds A pod's time to network by phase (ip: its IP reserved, growth included; wire: kernel work and commit; total).\n# TYPE vpc_cni_add_seconds histogram"
        );
        for (phase, h) in &r.add {
            h.render(
                &mut out,
                "vpc_cni_add_seconds",
                &format!("phase=\"{phase}\""),
            );
        }
    });
    out
}

/// Serves the exposition on `listener` until the task is dropped: every
/// connection gets one answer, whatever it asked.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: impl Fn() -> BTreeMap<&'static str, usize> + Send + Sync + 'static,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pool = std::sync::Arc::new(pool);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let pool = std::sync::Arc::clone(&pool);
        tokio::spawn(async move {
            // Read the request head (at most 8 KiB, 5 s), then answer.
            let mut buf = vec![0u8; 8192];
            let mut got = 0;
            let read = async {
                while got < buf.len() {
                    match conn.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
            let body = render(&pool());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_counters_histograms_and_gauges() {
        cloud_call("AttachNetworkInterface", None);
        cloud_call("DescribeVpcTaskResult", Some("RequestLimitExceeded"));
        task_confirmed("AttachNetworkInterface", Duration::from_millis(700));
        add_phase("total", Duration::from_millis(3));
        let pool = BTreeMap::from([("free", 4), ("allocated", 2)]);
        let text = render(&pool);
        assert!(
            text.contains("vpc_cni_pool_ips{state=\"free\"} 4"),
            "{text}"
        );
        assert!(
            text.contains(
                "vpc_cni_cloud_calls_total{action=\"DescribeVpcTaskResult\",code=\"RequestLimitExceeded\"}"
            ),
            "{text}"
        );
        assert!(
            text.contains("vpc_cni_cloud_throttled_total{action=\"DescribeVpcTaskResult\"}"),
            "{text}"
        );
        assert!(
            text.contains(
                "vpc_cni_cloud_task_seconds_bucket{action=\"AttachNetworkInterface\",le=\"1\"}"
            ),
            "{text}"
        );
        assert!(
            text.contains("vpc_cni_add_seconds_bucket{phase=\"total\",le=\"+Inf\"}"),
            "{text}"
        );
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    /// The value of the sample line starting with `series` (`name{labels}`).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_subnets_free_addresses_are_a_gauge_of_its_last_answer() {
        subnet_free_ips("subnet-metrics-test", "ap-test-1", 250);
        subnet_free_ips("subnet-metrics-test", "ap-test-1", 249);
        let text = render(&BTreeMap::new());
        assert!(
            text.contains("# TYPE vpc_cni_subnet_free_ips gauge\n"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "vpc_cni_subnet_free_ips{subnet=\"subnet-metrics-test\",zone=\"ap-test-1\"}"
            ),
            Some(249.0),
            "{text}"
        );
    }

    #[test]
    fn eni_limit_refusals_are_counted_from_zero() {
        let text = render(&BTreeMap::new());
        assert!(
            text.contains("# TYPE vpc_cni_eni_limit_total counter\n"),
            "{text}"
        );
        // Process-wide: other tests may count meanwhile.
        let before = sample(&text, "vpc_cni_eni_limit_total").expect("always shown");
        eni_limit();
        let after = sample(&render(&BTreeMap::new()), "vpc_cni_eni_limit_total").expect("shown");
        assert!(after >= before + 1.0, "{before} → {after}");
    }

    #[test]
    fn a_call_without_an_answer_is_counted_unreachable_not_ok() {
        let series =
            "vpc_cni_cloud_calls_total{action=\"DescribeMetricsTest\",code=\"Unreachable\"}";
        cloud_call("DescribeMetricsTest", Some(UNREACHABLE));
        cloud_call("DescribeMetricsTest", Some(UNREACHABLE));
        let text = render(&BTreeMap::new());
        assert_eq!(sample(&text, series), Some(2.0), "{text}");
        assert!(
            !text.contains("vpc_cni_cloud_throttled_total{action=\"DescribeMetricsTest\"}"),
            "{text}"
        );
    }

    #[test]
    fn label_values_from_the_cloud_are_escaped() {
        subnet_free_ips("subnet-\"odd\"\\", "zone\nx", 1);
        let text = render(&BTreeMap::new());
        assert!(
            text.contains(
                "vpc_cni_subnet_free_ips{subnet=\"subnet-\\\"odd\\\"\\\\\",zone=\"zone\\nx\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_families_listed_are_exactly_those_rendered() {
        let text = render(&BTreeMap::new());
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(typed, FAMILIES, "{text}");
    }
}
