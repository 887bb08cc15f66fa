//! `vpc-sim serve`: the emulator behind an HTTP listener, one thread per
//! connection, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use vpc_sim::api::{ApiLimits, Credentials, Emulator, Faults};
use vpc_sim::world::{NodeLimits, SharedWorld, World};

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The world's state file (`DIR/vpc.json` of `up`).
    #[arg(long)]
    pub world: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// File to write the bound address to once listening.
    #[arg(long)]
    pub address_file: Option<PathBuf>,
    /// File holding `SecretId` and `SecretKey` lines (`KEY=VALUE`).
    #[arg(long)]
    pub credentials: PathBuf,
    /// Share of API calls answered `RequestLimitExceeded`.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Share of API calls answered `InternalError`.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Latency added to every API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// The VPC API's limits to enforce: `documented` (Tencent Cloud's
    /// request rates per action for all callers together, answered
    /// `RequestLimitExceeded` beyond them, and at most 10 addresses named
    /// per call), `off` (no rate limit), either followed by
    /// `,Action=N,...` to set an action's rate (0: unlimited).
    #[arg(long, default_value = "documented")]
    pub api_limits: String,
    /// How long asynchronous tasks (attach, detach, ...) run, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub task_latency_ms: u64,
    /// When the world file does not exist: create a world of this many
    /// nodes, without a fabric (no links; for tests that are not root).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// For a created world: ENIs per node, the primary included.
    #[arg(long, default_value_t = NodeLimits::default().max_enis)]
    pub max_enis: u32,
    /// For a created world: IPs per ENI, its primary IP included.
    #[arg(long, default_value_t = NodeLimits::default().max_ips_per_eni)]
    pub ips_per_eni: u32,
    /// For a created world: ENIs the VPC may hold in all.
    #[arg(long, default_value_t = vpc_sim::model::DEFAULT_ENI_QUOTA)]
    pub eni_quota: u32,
    /// For a created world: the subnet's CIDR.
    #[arg(long, default_value = vpc_sim::world::SUBNET_CIDR)]
    pub subnet_cidr: String,
    /// Actions that always fail with `UnsupportedOperation.InvalidState`
    /// (comma-separated), to test how a client cleans up.
    #[arg(long, value_delimiter = ',')]
    pub fail_actions: Vec<String>,
    /// Actions (comma-separated) that are applied but whose answer is lost:
    /// the connection stays silent, so the client times out not knowing
    /// whether the call took effect. See `--drop-every`.
    #[arg(long, value_delimiter = ',')]
    pub drop_responses: Vec<String>,
    /// With `--drop-responses`: lose the answer to the first of every N
    /// calls of each listed action (1: every answer).
    #[arg(long, default_value_t = 2)]
    pub drop_every: u64,
    /// `ADDRESS=INSTANCE`: a caller the metadata service answers as that
    /// instance (`GET /latest/meta-data/...`), besides the instances' own
    /// primary IPs. Repeatable.
    #[arg(long = "metadata-client", value_parser = metadata_client)]
    pub metadata_clients: Vec<(std::net::IpAddr, String)>,
    /// How long the temporary credentials of the instances' CAM role
    /// (`cam/security-credentials/vpc-cni-role` of the metadata service)
    /// are valid, in seconds; refused after, rotated when a third is left.
    #[arg(long, default_value_t = vpc_sim::api::cam::DEFAULT_LIFETIME_SECS)]
    pub credential_lifetime: u64,
    /// What the instances' CAM role may do: `full`, or `read-only`
    /// (`Describe*`; other actions refused with `UnauthorizedOperation`), for
    /// a cluster whose cloud gateway holds the only write key.
    #[arg(long, value_enum, default_value = "full")]
    pub role_policy: vpc_sim::api::cam::RolePolicy,
}

fn metadata_client(s: &str) -> Result<(std::net::IpAddr, String), String> {
    let (ip, instance) = s
        .split_once('=')
        .ok_or_else(|| format!("{s}: expected ADDRESS=INSTANCE"))?;
    let ip = ip.parse().map_err(|e| format!("{ip}: {e}"))?;
    Ok((ip, instance.to_string()))
}

/// Runs the emulator.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let credentials = read_credentials(&args.credentials)?;
    let faults = Faults {
        throttle_rate: args.throttle_rate,
        error_rate: args.error_rate,
        latency_ms: args.latency_ms,
        task_latency_ms: args.task_latency_ms,
    };
    let world = SharedWorld::at(&args.world);
    let limits = NodeLimits {
        max_enis: args.max_enis,
        max_ips_per_eni: args.ips_per_eni,
    };
    let cidr = vpc_sim::model::Cidr::parse(&args.subnet_cidr).map_err(|e| e.to_string())?;
    world
        .create_if_missing(|| World::with_subnet(args.nodes, limits, args.eni_quota, cidr))
        .map_err(|e| e.to_string())?;
    let limits = ApiLimits::parse(&args.api_limits).map_err(|e| format!("--api-limits: {e}"))?;
    let emulator = Arc::new(
        Emulator::new(world, credentials, faults)
            .limited(limits)
            .failing(args.fail_actions.clone())
            .dropping(args.drop_responses.clone(), args.drop_every)
            .metadata_clients(args.metadata_clients.iter().cloned().collect())
            .credential_lifetime(args.credential_lifetime)
            .role_policy(args.role_policy),
    );
    let (bound, server) = vpc_sim::api::http::listen(&args.listen)?;
    if let Some(file) = &args.address_file {
        std::fs::write(file, &bound).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    vpc_sim::api::http::serve(server, emulator, true);
    Ok(())
}

/// Reads `SecretId=...` and `SecretKey=...` lines.
pub fn read_credentials(path: &std::path::Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("{}: no {key}", path.display()))
    };
    Ok(Credentials {
        secret_id: get("SecretId")?,
        secret_key: get("SecretKey")?,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Hole 12: the emulator's log lines (one per failed API call) are
    /// plain text when stderr is a pipe or a file.
    #[test]
    fn hole_12_no_colour_codes_in_the_emulators_log_to_a_pipe() {
        let exe = std::env::current_exe().expect("exe");
        let bin = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .join("vpc-sim");
        assert!(bin.exists(), "{} missing", bin.display());
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = dir.path().join("credentials");
        std::fs::write(&credentials, "SecretId=a\nSecretKey=b\n").expect("write");
        let address_file = dir.path().join("address");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--world")
            .arg(dir.path().join("vpc.json"))
            .arg("--credentials")
            .arg(&credentials)
            .arg("--address-file")
            .arg(&address_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vpc-sim serve");
        let deadline = Instant::now() + Duration::from_secs(10);
        let address = loop {
            if let Ok(a) = std::fs::read_to_string(&address_file)
                && !a.is_empty()
            {
                break a;
            }
            assert!(Instant::now() < deadline, "emulator did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut http = std::net::TcpStream::connect(&address).expect("connect");
        http.write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .expect("request");
        let mut answer = String::new();
        let _ = http.read_to_string(&mut answer);
        let mut line = String::new();
        BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut line)
            .expect("log line");
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.contains("InvalidParameterValue"), "{line:?}");
        assert!(!line.contains('\x1b'), "colour code in {line:?}");
    }
}
