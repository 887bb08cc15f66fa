//! `vpc-sim e2e-report`: the table of a Kubernetes e2e run (Ginkgo's JSON
//! report, `e2e.test --ginkgo.json-report FILE`), one line per spec that
//! ran or was skipped at run time (with the reason), and whether all passed.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

/// Flags of `e2e-report`.
#[derive(Debug, Args)]
pub struct E2eReportArgs {
    /// Ginkgo's JSON reports (one per e2e.test process), read as one run.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// A title for the table (the kube-proxy mode, say).
    #[arg(long, default_value = "")]
    pub title: String,
}

/// One spec's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The spec's full text.
    pub spec: String,
    /// `passed`, `failed`, `skipped`, `panicked`, `timedout`, ...
    pub state: String,
    /// Seconds it took.
    pub seconds: f64,
    /// The failure's or the skip's message, first line.
    pub message: String,
}

/// The specs of a report that ran, or were skipped while running (those
/// left out by `--ginkgo.focus`/`--ginkgo.skip` are not listed).
pub fn outcomes(report: &Value) -> Vec<Outcome> {
    let mut out = Vec::new();
    for suite in report.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let state = spec["State"].as_str().unwrap_or("unknown").to_string();
            let message = spec["Failure"]["Message"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            if state == "skipped" && message.is_empty() {
                continue;
            }
            let mut text: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            text.push(spec["LeafNodeText"].as_str().unwrap_or_default());
            out.push(Outcome {
                spec: text.join(" "),
                state,
                seconds: spec["RunTime"].as_f64().unwrap_or(0.0) / 1e9,
                message,
            });
        }
    }
    out
}

/// Runs `e2e-report`: prints the table; fails when a spec did not pass.
pub fn run(args: E2eReportArgs) -> Result<(), String> {
    let mut specs = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let report: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        specs.extend(outcomes(&report));
    }
    specs.sort_by(|a, b| a.spec.cmp(&b.spec));
    let mut out = std::io::stdout().lock();
    if !args.title.is_empty() {
        let _ = writeln!(out, "### {}", args.title);
    }
    let _ = writeln!(out, "| spec | result | time |\n|---|---|---|");
    for s in &specs {
        let result = match (s.state.as_str(), s.message.is_empty()) {
            ("passed", _) => "pass".to_string(),
            (state, true) => state.to_string(),
            (state, false) => format!("{state}: {}", s.message.replace('|', "\\|")),
        };
        let _ = writeln!(out, "| {} | {result} | {:.1} s |", s.spec, s.seconds);
    }
    let passed = specs.iter().filter(|s| s.state == "passed").count();
    let skipped = specs.iter().filter(|s| s.state == "skipped").count();
    let failed = specs.len() - passed - skipped;
    let _ = writeln!(out, "\n{passed} passed, {failed} failed, {skipped} skipped");
    if specs.is_empty() {
        return Err("the report holds no spec that ran".into());
    }
    if failed > 0 {
        return Err(format!("{failed} specs did not pass"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn specs_that_ran_or_were_skipped_with_a_reason_are_listed() {
        let report = json!([{"SpecReports": [
            {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[sig-network] DNS"],
             "LeafNodeText": "should provide DNS for the cluster [Conformance]",
             "State": "passed", "RunTime": 12_500_000_000u64},
            {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[sig-network] Services"],
             "LeafNodeText": "should be able to up and down services", "State": "skipped",
             "RunTime": 0, "Failure": {"Message": ""}},
            {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[sig-network] HostPort"],
             "LeafNodeText": "validates ...", "State": "failed", "RunTime": 3e9,
             "Failure": {"Message": "timed out\nmore"}},
            {"LeafNodeType": "SynchronizedBeforeSuite", "State": "passed"}
        ]}]);
        let o = outcomes(&report);
        assert_eq!(o.len(), 2);
        assert_eq!(
            o[0].spec,
            "[sig-network] DNS should provide DNS for the cluster [Conformance]"
        );
        assert_eq!(o[0].seconds, 12.5);
        assert_eq!(o[1].state, "failed");
        assert_eq!(o[1].message, "timed out");
    }
}
