//! Log setup: structured `tracing` events to stderr, as text or JSON.
//! Colour codes only when stderr is a terminal: a log file or a pipe to a
//! collector gets plain text.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, level: LevelFilter) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// Hole 12: the agent's log to a pipe (or a file) carried ANSI colour
    /// codes. Runs the real binary with stderr to a pipe until it has
    /// logged a few lines (retries of an unreachable cloud endpoint).
    #[test]
    fn hole_12_no_colour_codes_in_logs_to_a_pipe() {
        let exe = std::env::current_exe().expect("exe");
        let bin = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .join("vpc-cni-agent");
        assert!(
            bin.exists(),
            "{} missing: run `cargo build --workspace --bins`",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = dir.path().join("credentials");
        std::fs::write(&credentials, "SecretId=a\nSecretKey=b\n").expect("write");
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--credentials-file")
            .arg(&credentials)
            .args(["--dataplane", "fake", "--log-level", "debug"])
            .args(["--cloud-endpoint", "http://127.0.0.1:9"])
            .args(["--instance-id", "ins-x", "--zone", "z", "--vpc-id", "vpc-x"])
            .args(["--region", "r"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vpc-cni-agent");
        let stderr = child.stderr.take().expect("stderr");
        let lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take(2)
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        assert!(!lines.is_empty(), "the agent logged nothing");
        for line in &lines {
            assert!(!line.contains('\x1b'), "colour code in {line:?}");
        }
    }
}
