//! `vpc-sim serve`: the emulator behind an HTTP listener, one thread per
//! connection, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use vpc_sim::api::{Credentials, Emulator, Faults, HttpRequest};
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
    let emulator =
        Arc::new(Emulator::new(world, credentials, faults).failing(args.fail_actions.clone()));
    let server = tiny_http::Server::http(&args.listen)
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if let Some(file) = &args.address_file {
        std::fs::write(file, &bound).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    for mut request in server.incoming_requests() {
        let emulator = Arc::clone(&emulator);
        std::thread::spawn(move || {
            let mut body = Vec::new();
            let _ = request.as_reader().read_to_end(&mut body);
            let req = HttpRequest {
                method: request.method().as_str().to_string(),
                path: request.url().split('?').next().unwrap_or("/").to_string(),
                headers: request
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.field.as_str().as_str().to_ascii_lowercase(),
                            h.value.as_str().to_string(),
                        )
                    })
                    .collect(),
                body,
            };
            let resp = emulator.handle(&req);
            log_failure(&req, &resp);
            let header = tiny_http::Header::from_bytes("Content-Type", resp.content_type)
                .expect("static header");
            let _ = request.respond(
                tiny_http::Response::from_data(resp.body)
                    .with_status_code(resp.status)
                    .with_header(header),
            );
        });
    }
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

/// One line on stderr for every API call that failed, for whoever reads
/// the emulator's log.
fn log_failure(req: &HttpRequest, resp: &vpc_sim::api::HttpResponse) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
        return;
    };
    if let Some(error) = body.get("Response").and_then(|r| r.get("Error")) {
        let action = req
            .headers
            .get("x-tc-action")
            .map(String::as_str)
            .unwrap_or("?");
        eprintln!(
            "{action}: {} {}",
            error["Code"].as_str().unwrap_or("?"),
            error["Message"].as_str().unwrap_or("")
        );
    }
}
