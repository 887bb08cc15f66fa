//! Helpers for the workspace integration tests: the real `vpc-cni` and
//! `vpc-cni-agent` binaries, run the way kubelet and a node run them.

pub mod storm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use proto::wire::{PoolView, Request, Response};
use serde_json::Value;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool `scripts/k8s-bins.sh` builds into its cache (helm, promtool, the
/// Kubernetes binaries); the suite builds them before the tests, so a
/// missing one fails.
pub fn k8s_tool(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/k8s-bins.sh"))
        .arg("--print")
        .output()
        .expect("run scripts/k8s-bins.sh --print");
    let tool = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name);
    assert!(
        tool.is_file(),
        "{} is missing: run `K8S_BINS={name} bash scripts/k8s-bins.sh`",
        tool.display()
    );
    tool
}

/// Path of a workspace binary. `scripts/test.sh` builds them all first
/// (`cargo build --workspace --bins`); only when one is missing are they
/// built here, once: building again from inside a test run could rebuild
/// them with another feature set and race the other tests using them.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let path = target_dir().join(name);
    if !path.exists() {
        BUILD.call_once(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--workspace", "--bins"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the binaries failed");
        });
    }
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --bins`",
        path.display()
    );
    path
}

fn target_dir() -> PathBuf {
    // A command outside the test harness (bench/fault-storm) says where.
    if let Some(dir) = std::env::var_os("VPC_CNI_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // The test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The gate of every privileged test (`privileged_*`): the test carries
/// `#[cfg_attr(not(privileged), ignore = "...")]`, so where it cannot run
/// (not root, see `build/privileged.rs`) it is reported skipped, never
/// passed; where it is compiled in, it calls this first and fails unless
/// it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "privileged test built to run (cfg(privileged)) but running as uid {uid}"
    );
}

/// A running `vpc-cni-agent` on a private socket and state directory, with
/// the fake dataplane, talking to its own emulator over HTTP.
#[derive(Debug)]
pub struct Agent {
    /// Scratch space: socket, state, logs, fake netns files.
    pub dir: tempfile::TempDir,
    /// Extra flags given to `run`.
    pub flags: Vec<String>,
    /// The cloud it talks to.
    pub emulator: Emulator,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent with `flags` on a one-node emulator, and waits until
    /// it answers.
    pub fn start(flags: &[&str]) -> Agent {
        Agent::start_with(&[], flags)
    }

    /// Like [`Agent::start`], with extra `vpc-sim serve` flags (limits).
    pub fn start_with(emulator_flags: &[&str], flags: &[&str]) -> Agent {
        Agent::start_on(Emulator::start(1, emulator_flags), flags)
    }

    /// An agent of node 1 of `emulator`. With `--cloud-gateway` among
    /// `flags` it holds no key and calls the cloud through that gateway
    /// (whose token file the flags name too).
    pub fn start_on(emulator: Emulator, flags: &[&str]) -> Agent {
        let mut agent = Agent {
            dir: tempfile::tempdir().expect("tempdir"),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            emulator,
            child: None,
        };
        agent.spawn();
        agent
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Moves the agent's clock forward by `by` (it reads the offset file
    /// the test harness passes with `--test-clock-offset-file`).
    pub fn advance_clock(&self, by: Duration) {
        let file = self.dir.path().join("clock-offset");
        let now: u64 = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write(&file, (now + by.as_millis() as u64).to_string()).expect("clock offset");
    }

    /// A file standing in for a pod's netns (the fake dataplane never
    /// enters it, but the plugin checks it exists).
    pub fn netns(&self, name: &str) -> String {
        let p = self.dir.path().join(format!("netns-{name}"));
        std::fs::write(&p, b"").expect("netns file");
        p.display().to_string()
    }

    /// Starts the agent process (again) on the same state.
    pub fn spawn(&mut self) {
        self.child = Some(spawn_agent(self.dir.path(), &self.emulator, 1, &self.flags));
        wait_ready(
            &self.socket(),
            self.child.as_mut(),
            &self.dir.path().join("agent.log"),
        );
    }

    /// Waits up to `timeout` for the agent to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILLs the agent, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The pool as the agent reports it.
    pub fn pool(&self) -> PoolView {
        match proto::client::call(&self.socket(), &Request::Pool, Duration::from_secs(10)) {
            Ok(Ok(Response::Pool(v))) => v,
            other => panic!("pool: {other:?}"),
        }
    }

    /// Waits (10 s at most) until the agent's maintenance loop sleeps with
    /// nothing asked of it and wakes no sooner than `quiet` from now (the
    /// wall clock; the agent's clock not moved yet).
    pub fn wait_for_idle_maintenance(&self, quiet: Duration) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let wall_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64;
            let pool = self.pool();
            let asleep = pool.maintenance.and_then(|m| m.asleep_until_ms);
            if asleep.is_some_and(|at| at >= wall_ms + quiet.as_millis() as u64) {
                return;
            }
            assert!(
                Instant::now() < until,
                "the maintenance loop never fell asleep for {quiet:?}: {:?}\n{}",
                pool.maintenance,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A network configuration for this agent.
    pub fn conf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "vpc",
            "type": "vpc-cni",
            "agentSocket": self.socket(),
            "timeoutSeconds": 10,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What one plugin run produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status was zero.
    pub ok: bool,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Run {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code; panics if the run succeeded.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected failure, got success: {}", self.stdout);
        self.json()["code"].as_u64().expect("code")
    }
}

/// Environment of one CNI call.
#[derive(Clone, Debug, Default)]
pub struct CniEnv {
    /// `(name, value)` pairs; only these are set.
    pub vars: Vec<(String, String)>,
}

impl CniEnv {
    /// The environment kubelet sets for a per-pod verb.
    pub fn pod(command: &str, container: &str, netns: &str) -> CniEnv {
        CniEnv::default()
            .set("CNI_COMMAND", command)
            .set("CNI_CONTAINERID", container)
            .set("CNI_NETNS", netns)
            .set("CNI_IFNAME", "eth0")
            .set("CNI_PATH", "/opt/cni/bin")
            .set(
                "CNI_ARGS",
                &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container};K8S_POD_INFRA_CONTAINER_ID={container}"),
            )
    }

    /// The environment for a verb without an attachment (GC, STATUS, VERSION).
    pub fn bare(command: &str) -> CniEnv {
        CniEnv::default()
            .set("CNI_COMMAND", command)
            .set("CNI_PATH", "/opt/cni/bin")
    }

    /// Sets (or replaces) a variable.
    pub fn set(mut self, name: &str, value: &str) -> CniEnv {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.into(), value.into()));
        self
    }

    /// Removes a variable.
    pub fn unset(mut self, name: &str) -> CniEnv {
        self.vars.retain(|(n, _)| n != name);
        self
    }
}

/// Runs `vpc-cni` with exactly `env` and `stdin`, as kubelet does.
pub fn cni(env: &CniEnv, stdin: &[u8]) -> Run {
    cni_as(env, stdin, None)
}

/// Like [`cni`], as the given uid.
pub fn cni_as(env: &CniEnv, stdin: &[u8], uid: Option<u32>) -> Run {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin("vpc-cni"));
    cmd.env_clear().envs(env.vars.iter().map(|(k, v)| (k, v)));
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    run_plugin(cmd, stdin)
}

/// Runs a plugin's `cmd` (its environment already set) with `stdin`.
fn run_plugin(mut cmd: Command, stdin: &[u8]) -> Run {
    use std::io::Write;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    // The plugin may stop reading early (oversized input): ignore EPIPE.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {program}: {e}"));
    let _ = writer.join();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// A network configuration list run as a runtime's libcni runs it: ADD
/// through the plugins in order, each one's result the next one's
/// `prevResult`; CHECK in order and DEL in reverse, each plugin given the
/// cached ADD result as `prevResult`; `runtimeConfig` holding only the
/// capability arguments a plugin declares in `capabilities`; each plugin
/// found by its `type` in `CNI_PATH`.
#[derive(Debug)]
pub struct ConfList {
    /// The list: `cniVersion`, `name`, `plugins`.
    pub list: Value,
    /// `CNI_PATH`: where each plugin's `type` is looked for, in order.
    pub cni_path: Vec<PathBuf>,
    /// The network namespace the runtime runs in (a node's).
    pub netns: PathBuf,
}

impl ConfList {
    /// ADD through the chain; the last plugin's result (libcni caches it).
    /// `env` is the attachment's (`CNI_COMMAND` is set here);
    /// `capability_args` what the runtime offers (`{"portMappings": [...]}`).
    pub fn add(&self, env: &CniEnv, capability_args: &Value) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let run = self.invoke(plugin, "ADD", env, capability_args, prev.as_ref())?;
            prev = Some(serde_json::from_str(&run.stdout).map_err(|e| {
                format!(
                    "{} ADD printed no result ({e}): {}",
                    plugin_type(plugin),
                    run.stdout
                )
            })?);
        }
        prev.ok_or_else(|| "the list has no plugins".to_string())
    }

    /// CHECK through the chain against `cached`, ADD's result.
    pub fn check(
        &self,
        env: &CniEnv,
        capability_args: &Value,
        cached: &Value,
    ) -> Result<(), String> {
        for plugin in self.plugins() {
            self.invoke(plugin, "CHECK", env, capability_args, Some(cached))?;
        }
        Ok(())
    }

    /// DEL through the chain, last plugin first, with `cached` (ADD's
    /// result, if the runtime has it) as `prevResult`.
    pub fn del(
        &self,
        env: &CniEnv,
        capability_args: &Value,
        cached: Option<&Value>,
    ) -> Result<(), String> {
        for plugin in self.plugins().iter().rev() {
            self.invoke(plugin, "DEL", env, capability_args, cached)?;
        }
        Ok(())
    }

    fn plugins(&self) -> &[Value] {
        self.list["plugins"].as_array().map_or(&[], Vec::as_slice)
    }

    /// One plugin's run: its configuration as libcni builds it from the
    /// list, in the runtime's namespace.
    fn invoke(
        &self,
        plugin: &Value,
        verb: &str,
        env: &CniEnv,
        capability_args: &Value,
        prev: Option<&Value>,
    ) -> Result<Run, String> {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.list["cniVersion"].clone();
        conf["name"] = self.list["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let runtime_config: serde_json::Map<String, Value> = plugin["capabilities"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .filter_map(|(cap, _)| Some((cap.clone(), capability_args.get(cap)?.clone())))
            .collect();
        if !runtime_config.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime_config);
        }
        let binary = self
            .cni_path
            .iter()
            .map(|dir| dir.join(plugin_type(plugin)))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "plugin {} not found in {:?}",
                    plugin_type(plugin),
                    self.cni_path
                )
            })?;
        let cni_path = std::env::join_paths(&self.cni_path).expect("CNI_PATH");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(&binary)
            .env_clear()
            .envs(env.vars.iter().map(|(k, v)| (k, v)))
            .env("CNI_COMMAND", verb)
            .env("CNI_PATH", cni_path)
            // libcni hands the runtime's own environment on: portmap runs
            // iptables from its PATH.
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            );
        let run = run_plugin(cmd, &serde_json::to_vec(&conf).expect("json"));
        if !run.ok {
            return Err(format!(
                "{} {verb} failed: {} {}",
                plugin_type(plugin),
                run.stdout,
                run.stderr.trim()
            ));
        }
        Ok(run)
    }
}

/// A plugin's `type`.
fn plugin_type(plugin: &Value) -> &str {
    plugin["type"].as_str().unwrap_or("")
}

/// The `ip/32` a successful ADD result gives the pod interface.
pub fn pod_address(result: &Value) -> String {
    let ips = result["ips"].as_array().expect("ips");
    let idx = result["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .position(|i| i["name"] == "eth0" && i.get("sandbox").is_some())
        .expect("pod interface");
    ips.iter()
        .find(|ip| ip["interface"].as_u64() == Some(idx as u64))
        .and_then(|ip| ip["address"].as_str())
        .expect("pod address")
        .to_string()
}

/// A `vpc-sim up` simulation, brought down on drop.
#[derive(Debug)]
pub struct Sim {
    /// Holds the state directory's parent.
    pub dir: tempfile::TempDir,
    /// `DIR/env` as key/value pairs.
    pub env: std::collections::BTreeMap<String, String>,
}

impl Sim {
    /// Brings up `nodes` nodes with extra `vpc-sim up` flags.
    pub fn up(nodes: usize, flags: &[&str]) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("sim");
        let out = Command::new(bin("vpc-sim"))
            .args(["up", "--nodes", &nodes.to_string(), "--state"])
            .arg(&state)
            .args(flags)
            .output()
            .expect("run vpc-sim up");
        assert!(
            out.status.success(),
            "vpc-sim up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(state.join("env"))
            .expect("env file")
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        Sim { dir, env }
    }

    /// A value from `DIR/env`.
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} not in env"))
    }

    /// The network configuration for node `n` (from 1), as libcni derives
    /// it from the node's conflist.
    pub fn conf(&self, n: usize, version: &str) -> Value {
        let list: Value = serde_json::from_slice(
            &std::fs::read(self.get(&format!("NODE{n}_CONFLIST"))).expect("conflist"),
        )
        .expect("json");
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = Value::from(version);
        conf["name"] = list["name"].clone();
        conf
    }

    /// Kills node `n`'s agent with SIGKILL, as a crash would, and starts it
    /// again with the same command line; returns once it answers.
    pub fn crash_agent(&self, n: usize) {
        let state = self.dir.path().join("sim");
        let sim: Value =
            serde_json::from_slice(&std::fs::read(state.join("sim.json")).expect("sim.json"))
                .expect("json");
        let pid = sim["nodes"][n - 1]["agent_pid"]
            .as_u64()
            .expect("agent pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("agent cmdline");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // SAFETY: plain kill(2) on a pid this simulation started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until every thread is gone, not only the leader: the store's lock
        // is held until the last one has closed its descriptors.
        while !vpc_sim::k8s::faults::threads_gone(pid as u32) {
            assert!(Instant::now() < deadline, "agent {pid} did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(state.join(format!("node{n}/agent.log")))
            .expect("agent log");
        #[expect(
            clippy::zombie_processes,
            reason = "the restarted agent outlives this handle; `vpc-sim down` stops it by pid"
        )]
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("restart agent");
        // So that `vpc-sim down` stops the new one.
        let mut sim = sim;
        sim["nodes"][n - 1]["agent_pid"] = Value::from(child.id());
        std::fs::write(
            state.join("sim.json"),
            serde_json::to_vec_pretty(&sim).expect("json"),
        )
        .expect("sim.json");
        let socket = PathBuf::from(self.get(&format!("NODE{n}_SOCKET")));
        loop {
            if let Ok(Ok(Response::Status(s))) =
                proto::client::call(&socket, &Request::Status, Duration::from_secs(2))
                && s.ready
            {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(state.join(format!("node{n}/agent.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "agent did not come back within 10 s; the end of its log:\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `ip -n <node n's namespace> ARGS` and returns its output.
    pub fn node_ip(&self, n: usize, args: &[&str]) -> String {
        let netns = self
            .get(&format!("NODE{n}_NETNS"))
            .rsplit('/')
            .next()
            .expect("name")
            .to_string();
        ip(&[&["-n", &netns], args].concat())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = Command::new(bin("vpc-sim"))
            .arg("down")
            .arg("--state")
            .arg(self.dir.path().join("sim"))
            .output();
    }
}

/// A pod network namespace with a unique name, deleted on drop.
#[derive(Debug)]
pub struct PodNetns {
    /// Its name.
    pub name: String,
}

impl PodNetns {
    /// Creates one.
    pub fn new() -> PodNetns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vpct-{}-pod{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        PodNetns { name }
    }

    /// Its path, as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `ip -n <this> ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        ip(&[&["-n", self.name.as_str()], args].concat())
    }

    /// Whether an ICMP echo to `dst` is answered (three tries, so one
    /// packet lost while neighbours resolve on a loaded machine is no failure).
    pub fn ping(&self, dst: &str) -> bool {
        (0..3).any(|_| {
            Command::new("ip")
                .args([
                    "netns", "exec", &self.name, "ping", "-c", "1", "-W", "2", dst,
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
    }
}

impl Default for PodNetns {
    fn default() -> PodNetns {
        PodNetns::new()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Starts `vpc-cni-agent run` for instance `instance` of `emulator`'s
/// world (`ins-sim000N`), on the fake dataplane, with its socket
/// (`agent.sock`), state, log (`agent.log`) and clock offset file in `dir`.
pub fn spawn_agent(dir: &Path, emulator: &Emulator, instance: usize, flags: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .expect("log file");
    // Behind a gateway the agent holds no key and names no endpoint.
    let direct = !flags.iter().any(|f| f.starts_with("--cloud-gateway"));
    let endpoint = format!("http://{}", emulator.address);
    let credentials = emulator.dir.path().join("credentials");
    let key: Vec<&std::ffi::OsStr> = if direct {
        vec![
            "--cloud-endpoint".as_ref(),
            endpoint.as_ref(),
            "--credentials-file".as_ref(),
            credentials.as_os_str(),
        ]
    } else {
        Vec::new()
    };
    Command::new(bin("vpc-cni-agent"))
        .arg("run")
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--dataplane", "fake", "--log-level", "debug"])
        .args(key)
        .args([
            "--metadata-url",
            &format!("http://{}/ins-sim{instance:04}", emulator.address),
        ])
        .arg("--test-clock-offset-file")
        .arg(dir.join("clock-offset"))
        .args(
            // A short tick unless the test sets its own.
            (!flags.iter().any(|f| f == "--maintenance-interval"))
                .then_some(["--maintenance-interval", "200ms"])
                .into_iter()
                .flatten(),
        )
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn agent")
}

/// Waits until the agent on `socket` answers STATUS; panics with its log
/// if it exits first or takes over 20 s.
pub fn wait_ready(socket: &Path, mut child: Option<&mut Child>, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Ok(Response::Status(_))) =
            proto::client::call(socket, &Request::Status, Duration::from_secs(2))
        {
            return;
        }
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("agent exited with {status} before serving:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "agent not ready in time:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `ip ARGS`, panicking on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `vpc-sim serve` emulator over a fresh model-only world, stopped on drop.
#[derive(Debug)]
pub struct Emulator {
    /// Its state directory.
    pub dir: tempfile::TempDir,
    /// `host:port` it listens on.
    pub address: String,
    /// The SecretId it accepts.
    pub secret_id: String,
    /// The SecretKey it accepts.
    pub secret_key: String,
    child: Child,
}

impl Emulator {
    /// Starts one with `nodes` instances and extra `serve` flags.
    pub fn start(nodes: usize, flags: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().expect("tempdir");
        let (secret_id, secret_key) = (
            "AKIDvpcsimtest".to_string(),
            format!("key-{}", std::process::id()),
        );
        let credentials = dir.path().join("credentials");
        std::fs::write(
            &credentials,
            format!("SecretId={secret_id}\nSecretKey={secret_key}\n"),
        )
        .expect("credentials");
        let mut args: Vec<String> = vec!["--nodes".into(), nodes.to_string()];
        args.extend(flags.iter().map(|s| s.to_string()));
        let (child, address) = Emulator::spawn(dir.path(), "127.0.0.1:0", &args);
        Emulator {
            dir,
            address,
            secret_id,
            secret_key,
            child,
        }
    }

    /// Stops it: the VPC API and the metadata service both stop answering
    /// (a [`restart`](Self::restart) brings them back).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it and starts it again on the same world and address with
    /// `flags` (faults), as an outage and a recovery of the API would look.
    pub fn restart(&mut self, flags: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let (child, address) = Emulator::spawn(self.dir.path(), &self.address, &args);
        assert_eq!(address, self.address);
        self.child = child;
    }

    fn spawn(dir: &std::path::Path, listen: &str, args: &[String]) -> (Child, String) {
        let address_file = dir.join("address");
        let _ = std::fs::remove_file(&address_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("emulator.log"))
            .expect("log");
        let child = Command::new(bin("vpc-sim"))
            .arg("serve")
            .arg("--world")
            .arg(dir.join("vpc.json"))
            .arg("--credentials")
            .arg(dir.join("credentials"))
            .arg("--address-file")
            .arg(&address_file)
            .args(["--listen", listen])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn vpc-sim serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        let address = loop {
            if let Ok(a) = std::fs::read_to_string(&address_file)
                && !a.is_empty()
            {
                break a;
            }
            assert!(Instant::now() < deadline, "emulator did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        (child, address)
    }

    /// The emulator's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }

    /// The simulated world as the emulator keeps it (its JSON file).
    pub fn world(&self) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.dir.path().join("vpc.json")).expect("world file"),
        )
        .expect("json")
    }

    /// Ids of the secondary (non-primary) ENIs in the world.
    pub fn secondary_enis(&self) -> Vec<String> {
        self.world()["vpc"]["enis"]
            .as_object()
            .expect("enis")
            .values()
            .filter(|e| e["primary"] == false)
            .map(|e| e["id"].as_str().expect("id").to_string())
            .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod k8s;

#[cfg(test)]
mod tests {
    /// Hole 13: privileged tests returned early, and passed, when not root.
    /// Now they are compiled in exactly when they can run (root, or
    /// `VPC_CNI_PRIVILEGED` at build time) and ignored otherwise.
    #[test]
    fn hole_13_privileged_tests_are_compiled_in_exactly_when_they_can_run() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let expected = match option_env!("VPC_CNI_PRIVILEGED") {
            Some("1") => true,
            Some("0") => false,
            _ => root,
        };
        assert_eq!(
            cfg!(privileged),
            expected,
            "built for privileged tests: {}, running as root: {root}",
            cfg!(privileged)
        );
    }
}
