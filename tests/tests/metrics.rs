//! The metrics as Prometheus reads them: `promtool check metrics` on the
//! exposition of a real agent that served an ADD through the plugin (and
//! on the cluster component's), the subnet runway it shows against the
//! emulator's own count, and `deploy/monitoring/` against it: every metric
//! the dashboard and the alerts name is one the agent exports, the rules
//! pass `promtool check rules`, and the alerts the issue asks for fire on
//! the series they are meant for and not on the others (`promtool test
//! rules`).
//!
//! promtool is built from Prometheus' Go module by `scripts/k8s-bins.sh`
//! (the suite runs it first; `K8S_BINS=promtool` builds it alone); a
//! missing promtool fails these tests.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vpc_cni_tests::{Agent, CniEnv, bin, cni, k8s_tool, repo_root};

/// Runs promtool with `args` and `stdin`: (success, stdout, stderr).
fn run_promtool(args: &[&str], stdin: &str, dir: Option<&Path>) -> (bool, String, String) {
    let mut cmd = Command::new(k8s_tool("promtool"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("run promtool");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())
        .expect("write promtool's stdin");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `promtool check metrics` on `exposition`: fails on any complaint.
fn check_metrics(exposition: &str, whose: &str) {
    let (ok, stdout, stderr) = run_promtool(&["check", "metrics"], exposition, None);
    assert!(
        ok && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics on {whose}'s exposition:\n{stdout}{stderr}\n--- exposition ---\n{exposition}"
    );
}

/// An address on the loopback nothing listens on (just now).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

/// The exposition served at `address`, or why not.
fn scrape(address: &str) -> Result<String, String> {
    let mut conn = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200")
        || !head.contains("Content-Type: text/plain; version=0.0.4")
    {
        return Err(format!("unexpected head: {head}"));
    }
    Ok(body.to_string())
}

/// Scrapes `address` until `done` holds for the exposition (20 s at most).
fn scrape_until(
    address: &str,
    what: &str,
    log: impl Fn() -> String,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Err("never scraped".to_string());
    while Instant::now() < deadline {
        last = scrape(address);
        if let Ok(text) = &last
            && done(text)
        {
            return text.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what}: never seen; last scrape: {last:?}\n--- log ---\n{}",
        log()
    )
}

/// The value of the sample `series` (`name{labels}`) of an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The families of an exposition with their types (`# TYPE` lines).
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Every name a query may select from an exposition with these families:
/// each family, and a histogram's `_bucket`, `_sum` and `_count`.
fn selectable(families: &[(String, String)]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in families {
        names.insert(name.clone());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The metric names a PromQL expression selects: its identifiers that are
/// not inside strings, label matchers (`{...}`), ranges (`[...]`) or
/// grouping lists (`by (...)`, `on (...)`, ...), not functions (followed
/// by `(`), keywords, numbers or Grafana variables (`$node`).
fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations are keywords too: `sum by (x) (...)` has no `(` after `sum`.
    const KEYWORDS: [&str; 22] = [
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let c: Vec<char> = expr.chars().collect();
    let word = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let next_non_space = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        (i, c.get(i).copied())
    };
    let (mut names, mut i, mut braces, mut brackets) = (Vec::new(), 0, 0, 0);
    while i < c.len() {
        match c[i] {
            quote @ ('"' | '\'' | '`') => {
                i += 1;
                while i < c.len() && c[i] != quote {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => {
                braces += 1;
                i += 1;
            }
            '}' => {
                braces -= 1;
                i += 1;
            }
            '[' => {
                brackets += 1;
                i += 1;
            }
            ']' => {
                brackets -= 1;
                i += 1;
            }
            '$' => {
                i += 1;
                while i < c.len() && (word(c[i]) || c[i] == '{' || c[i] == '}') {
                    i += 1;
                }
            }
            ch if ch.is_ascii_digit() || ch == '.' => {
                while i < c.len() && (word(c[i]) || c[i] == '.') {
                    i += 1;
                }
            }
            ch if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' => {
                let start = i;
                while i < c.len() && word(c[i]) {
                    i += 1;
                }
                let ident: String = c[start..i].iter().collect();
                if braces > 0 || brackets > 0 {
                    continue;
                }
                let lower = ident.to_ascii_lowercase();
                let (at, next) = next_non_space(i);
                if GROUPING.contains(&lower.as_str()) {
                    // Skip the label list, if one follows.
                    if next == Some('(') {
                        i = at;
                        while i < c.len() && c[i] != ')' {
                            i += 1;
                        }
                        i += 1;
                    }
                } else if KEYWORDS.contains(&lower.as_str()) || next == Some('(') {
                    // A keyword or a function.
                } else {
                    names.push(ident);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_told_from_functions_labels_and_keywords() {
    let expr = r#"histogram_quantile(0.99, sum by (phase, le) (rate(vpc_cni_add_seconds_bucket{instance=~"$node",phase!="x y"}[$__rate_interval])))
        > 10 and on (job) sum without (code) (rate(vpc_cni_cloud_calls_total[5m] offset 1h)) unless min(up) by (instance) > 4 * 3600 / 1e3"#;
    assert_eq!(
        metric_names(expr),
        [
            "vpc_cni_add_seconds_bucket",
            "vpc_cni_cloud_calls_total",
            "up"
        ]
    );
}

/// The PromQL expressions of the dashboard: every target's, and the
/// metric a `label_values(METRIC, LABEL)` variable reads.
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn targets(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().expect("a target's expr").to_string());
            }
            targets(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    targets(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if var["type"] == "query" {
            let query = var["query"]["query"]
                .as_str()
                .or_else(|| var["query"].as_str())
                .expect("a variable's query");
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|q| q.split_once(','))
                .map(|(m, _)| m)
                .unwrap_or(query);
            out.push(metric.to_string());
        }
    }
    out
}

fn dashboard() -> Value {
    let path = repo_root().join("deploy/monitoring/grafana-dashboard.json");
    serde_json::from_slice(&std::fs::read(&path).expect("read the dashboard"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn prometheus_rule() -> Value {
    let path = repo_root().join("deploy/monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("read the PrometheusRule");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule of the PrometheusRule: (alert name, expression).
fn alerts(rule: &Value) -> Vec<(String, String)> {
    rule["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| {
            (
                r["alert"].as_str().expect("only alerts").to_string(),
                r["expr"].as_str().expect("expr").to_string(),
            )
        })
        .collect()
}

/// A running agent's exposition (after an ADD through the plugin, so the
/// histograms have values) passes promtool; its subnet runway is the
/// emulator's count; the dashboard and the alerts name only what it
/// exports.
#[test]
fn a_running_agents_exposition_passes_promtool_and_serves_the_dashboard_and_alerts() {
    // Fails first when promtool is missing.
    k8s_tool("promtool");
    let address = free_address();
    // A reconcile every second: the subnet's free addresses are looked at
    // again soon after the ADD grew the pool.
    let agent = Agent::start(&[
        "--metrics-address",
        &address,
        "--reconcile-interval",
        "1s",
        "--subnet-metrics-interval",
        "1s",
    ]);
    let netns = agent.netns("metrics");
    let conf = serde_json::to_vec(&agent.conf("1.0.0")).expect("json");
    let add = cni(&CniEnv::pod("ADD", "metrics", &netns), &conf);
    assert!(add.ok, "ADD: {} {}", add.stdout, add.stderr);

    // The subnet the agent uses, and its free addresses as the emulator
    // counts them (what DescribeSubnets answers).
    let world = || -> vpc_sim::world::World {
        serde_json::from_value(agent.emulator.world()).expect("the emulator's world")
    };
    let subnet = agent.pool().enis[0].subnet_id.clone();
    let zone = world().vpc.subnets[&subnet].zone.clone();
    let series = format!("vpc_cni_subnet_free_ips{{subnet=\"{subnet}\",zone=\"{zone}\"}}");
    let text = scrape_until(
        &address,
        "an ADD's time to network, and the subnet's free addresses as the emulator counts them",
        || agent.log(),
        |text| {
            let free = world().vpc.subnets[&subnet].free_ips();
            sample(text, r#"vpc_cni_add_seconds_count{phase="total"}"#) == Some(1.0)
                && sample(text, &series) == Some(f64::from(free))
        },
    );
    assert!(
        sample(&text, r#"vpc_cni_pool_ips{state="allocated"}"#) == Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"vpc_cni_cloud_calls_total{action="DescribeSubnets",code="OK"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "looked at again on a reconcile: {text}"
    );
    assert_eq!(
        sample(&text, "vpc_cni_eni_limit_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains(
            "vpc_cni_cloud_task_seconds_bucket{action=\"AttachNetworkInterface\",le=\"+Inf\"}"
        ),
        "{text}"
    );
    check_metrics(&text, "the agent");

    // The dashboard and the alerts name only what the agent exports.
    let families = families(&text);
    let known = selectable(&families);
    let dashboard = dashboard();
    let rule = prometheus_rule();
    let mut expressions: Vec<(String, String)> = dashboard_expressions(&dashboard)
        .into_iter()
        .map(|e| ("the dashboard".to_string(), e))
        .collect();
    expressions.extend(alerts(&rule));
    let mut used = BTreeSet::new();
    for (whose, expr) in &expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{whose}: no metric in {expr}");
        for name in names {
            assert!(
                known.contains(&name),
                "{whose}: {name} is not exported (the agent exports {known:?}): {expr}"
            );
            used.insert(name);
        }
    }
    // The subnet runway, ENILimit and the calls without an answer are what
    // the alerts are for.
    for needed in [
        "vpc_cni_subnet_free_ips",
        "vpc_cni_eni_limit_total",
        "vpc_cni_cloud_calls_total",
        "vpc_cni_cloud_throttled_total",
        "vpc_cni_add_seconds_bucket",
        "vpc_cni_pool_ips",
        "vpc_cni_cloud_task_seconds_bucket",
    ] {
        assert!(used.contains(needed), "{needed} is used nowhere: {used:?}");
    }
}

/// The dashboard is one Grafana imports: its data source a variable, a
/// `node` variable, every panel on the data source variable.
#[test]
fn the_dashboard_takes_its_data_source_and_nodes_as_variables() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "{}",
        d["schemaVersion"]
    );
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("node")["type"], "query");
    let mut ids = BTreeSet::new();
    for panel in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "ids are unique"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"],
            json!({"type": "prometheus", "uid": "${datasource}"}),
            "{}",
            panel["title"]
        );
        for t in panel["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                expr.contains("instance=~\"$node\""),
                "{}: filtered by the node variable: {expr}",
                panel["title"]
            );
        }
    }
}

/// The rules (`spec` of the PrometheusRule) pass `promtool check rules`,
/// and the alerts the issue asks for fire on the series they are meant for
/// and only there (`promtool test rules`, on their own expressions).
#[test]
fn the_alerts_pass_promtool_and_fire_where_they_should() {
    let rule = prometheus_rule();
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    for r in rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
    {
        for key in ["summary", "description", "runbook"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{}: no {key}",
                r["alert"]
            );
        }
        assert!(r["labels"]["severity"].is_string(), "{}", r["alert"]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // JSON is YAML: the rules file is the spec as it is.
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_json::to_string_pretty(&rule["spec"]).expect("json"),
    )
    .expect("write the rules");
    let (ok, stdout, stderr) =
        run_promtool(&["check", "rules", "rules.yaml"], "", Some(dir.path()));
    assert!(
        ok && stdout.contains("SUCCESS") && stderr.trim().is_empty(),
        "promtool check rules:\n{stdout}{stderr}"
    );

    let expr = |alert: &str| {
        alerts(&rule)
            .into_iter()
            .find(|(a, _)| a == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"))
            .1
    };
    let series = |labels: &str, values: &str| json!({"series": labels, "values": values});
    // Which label values an alert's expression returns at `at`.
    let firing = |alert: &str, by: &str, at: &str, on: &[&str]| {
        json!({
            "expr": format!("count by ({by}) ({})", expr(alert)),
            "eval_time": at,
            "exp_samples": on.iter().map(|v| json!({"labels": format!("{{{by}=\"{v}\"}}"), "value": 1})).collect::<Vec<_>>(),
        })
    };
    let calls = |instance: &str, code: &str| {
        format!(
            "vpc_cni_cloud_calls_total{{job=\"vpc-cni\",instance=\"{instance}\",action=\"DescribeNetworkInterfaces\",code=\"{code}\"}}"
        )
    };
    let tests = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                // Cut off: calls, none answered. Flaky: a few unanswered
                // among answers. Idle: unanswered once, long ago.
                series(&calls("cut", "Unreachable"), "0+6x40"),
                series(&calls("flaky", "Unreachable"), "0+1x40"),
                series(&calls("flaky", "OK"), "0+10x40"),
                series(&calls("idle", "Unreachable"), "6x40"),
                series(&calls("idle", "OK"), "2x40"),
                // ENI creations refused on one node, a while ago on another.
                series(r#"vpc_cni_eni_limit_total{job="vpc-cni",instance="full"}"#, "0x25 1 2 2 2 2"),
                series(r#"vpc_cni_eni_limit_total{job="vpc-cni",instance="earlier"}"#, "0 1 1x28"),
                series(r#"vpc_cni_eni_limit_total{job="vpc-cni",instance="fine"}"#, "0x30"),
                // Two nodes see subnet-a (the lower count is the fresher);
                // subnet-b is large and steady.
                series(r#"vpc_cni_subnet_free_ips{job="vpc-cni",instance="n1",subnet="subnet-a",zone="z1"}"#, "100-2x40"),
                series(r#"vpc_cni_subnet_free_ips{job="vpc-cni",instance="n2",subnet="subnet-a",zone="z1"}"#, "200x40"),
                series(r#"vpc_cni_subnet_free_ips{job="vpc-cni",instance="n1",subnet="subnet-b",zone="z1"}"#, "4000x40"),
            ],
            "promql_expr_test": [
                firing("VpcCniCloudUnreachable", "instance", "30m", &["cut"]),
                firing("VpcCniEniLimit", "instance", "30m", &["full"]),
                firing("VpcCniSubnetAddressesLow", "subnet", "30m", &["subnet-a"]),
                firing("VpcCniSubnetAddressesLow", "subnet", "10m", &[]),
                firing("VpcCniSubnetRunwayShort", "subnet", "30m", &["subnet-a"]),
            ],
        }],
    });
    std::fs::write(
        dir.path().join("tests.yaml"),
        serde_json::to_string_pretty(&tests).expect("json"),
    )
    .expect("write the rule tests");
    let (ok, stdout, stderr) = run_promtool(&["test", "rules", "tests.yaml"], "", Some(dir.path()));
    assert!(ok, "promtool test rules:\n{stdout}{stderr}");
}

/// The cluster component serves the same exposition for its own calls
/// (the sweeps', the gateway's), its families the agent's.
#[test]
fn the_cluster_components_exposition_passes_promtool() {
    let address = free_address();
    let dir = tempfile::tempdir().expect("tempdir");
    // No API server: the component serves its metrics while it keeps
    // trying for its lease.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\nusers:\n- name: none\n  user: {token: none}\ncontexts:\n- name: none\n  context: {cluster: none, user: none}\ncurrent-context: none\n",
    )
    .expect("kubeconfig");
    let credentials = dir.path().join("credentials");
    std::fs::write(&credentials, "SecretId=AKIDnone\nSecretKey=none\n").expect("credentials");
    let log = dir.path().join("cluster.log");
    /// Killed when the test ends, however it ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        Command::new(bin("vpc-cni-agent"))
            .arg("cluster")
            .args(["--metrics-address", &address])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--credentials-file")
            .arg(&credentials)
            .args([
                "--region",
                "sim-region",
                "--vpc-id",
                "vpc-none",
                "--cloud-endpoint",
                "http://127.0.0.1:1",
                "--webhook-port",
                "0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn vpc-cni-agent cluster"),
    );
    let text = scrape_until(
        &address,
        "the cluster component's exposition",
        || std::fs::read_to_string(&log).unwrap_or_default(),
        |text| text.contains("# TYPE vpc_cni_cloud_calls_total counter"),
    );
    check_metrics(&text, "the cluster component");
    let names: Vec<String> = families(&text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "vpc_cni_pool_ips",
            "vpc_cni_subnet_free_ips",
            "vpc_cni_eni_limit_total",
            "vpc_cni_cloud_calls_total",
            "vpc_cni_cloud_throttled_total",
            "vpc_cni_cloud_task_seconds",
            "vpc_cni_add_seconds",
        ],
        "{text}"
    );
    // SIGTERM ends it at once (as its container's PID 1 it gets no
    // default action: it asks for the signal).
    let pid = i32::try_from(child.0.id()).expect("pid");
    // SAFETY: kill(2) on the child's pid, which this test still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if child.0.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster component did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
