//! The fabric: what makes the model's ENIs real links, routed as a real
//! VPC routes them. One network namespace plays the VPC's virtual switch
//! and router; every node is a network namespace. Attaching an ENI creates
//! a veth pair whose node end appears in the node as `eth<device index>`
//! with the ENI's MAC and whose other end, `e<seq>`, stays in the router.
//! There is no layer-2 segment between nodes: every ENI has a
//! point-to-point link to the router, which
//!
//! - answers ARP for **every** address of the subnet itself, with the
//!   subnet gateway's MAC (proxy ARP on every `e<seq>`, no delay; the
//!   gateway address on the router's `lo`; a route for the whole subnet
//!   through `lo` so that addresses no ENI holds are answered too), so no
//!   node ever depends on another node answering ARP, and a node's ENIs on
//!   one subnet see no ARP for each other's addresses;
//! - delivers by routing: every address an ENI holds (its primary and
//!   secondary IPs) is a /32 route to that ENI's link with a permanent
//!   neighbour entry for the ENI's MAC, so the router never sends ARP into
//!   a node; assigning, moving and unassigning an IP changes that route;
//!   a packet to an address nobody holds is dropped and counted;
//! - applies the **source/destination check** ([`checks`]): a packet
//!   leaving an ENI with a source address that ENI does not hold is
//!   dropped and counted (on by default; off, it is only counted);
//! - carries IPv6 the same way ([`ipv6`]): the router is every link's IPv6
//!   gateway at `fe80::1`, delivers by /128 routes, and checks sources.
//!
//! That is what the VPC of Tencent Cloud (and AWS's) presents to an
//! instance: its ENIs talk only to the virtual switch, which answers ARP for
//! the subnet and forwards by the address table of the VPC, not by
//! learning, and drops what an ENI sends from an address it was not given.
//!
//! Behind the router, an "outside" namespace stands for everything beyond
//! the VPC (the internet, an on-premises network): one host,
//! [`OUTSIDE_HOST`], on a link to the router's [`OUTSIDE_GATEWAY`], with a
//! route back to the VPC's CIDR through the router. The router forwards
//! without NAT, so the outside host sees whatever source address a node
//! sends: with the agent's egress masquerade, the node's primary address.
//!
//! The fabric is simulator tooling, so it drives iproute2 (`ip`) and `nft`
//! rather than netlink: it runs only when ENIs and IPs come and go, never
//! on a pod's path.

pub mod checks;
pub mod ipv6;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::model::{Eni, Vpc};

/// Where named network namespaces live.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The outside host's address (TEST-NET-2, outside every VPC CIDR).
pub const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The router's address on the outside link.
pub const OUTSIDE_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The outside link's prefix length.
pub const OUTSIDE_PREFIX: u8 = 24;

/// Fabric failures.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// An `ip` command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// `ip` or `nft` could not be run.
    #[error("cannot run `ip` or `nft` (are iproute2 and nftables installed?): {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` answered something unexpected.
    #[error("{0}")]
    Parse(String),
}

/// The fabric of one simulated VPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fabric {
    /// The router's namespace name.
    pub router: String,
    /// Node namespace names by instance id.
    pub nodes: BTreeMap<String, String>,
    /// The MAC the router answers with on a subnet's links, by subnet id.
    #[serde(default)]
    pub gateway_macs: BTreeMap<String, String>,
    /// The outside namespace's name (absent in worlds made before it).
    #[serde(default)]
    pub outside: Option<String>,
    /// The MTU of every ENI's link.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

/// How a fabric is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FabricOptions {
    /// Drop what leaves an ENI from an address it does not hold (else only count it).
    pub source_check: bool,
    /// The MTU the VPC gives every ENI's link.
    pub mtu: u32,
}

impl Default for FabricOptions {
    fn default() -> FabricOptions {
        FabricOptions {
            source_check: true,
            mtu: default_mtu(),
        }
    }
}

/// The MTU of a Tencent Cloud VPC's ENIs.
fn default_mtu() -> u32 {
    1500
}

/// The router's end of an ENI's link.
pub fn router_link(eni: &Eni) -> String {
    format!("e{}", eni.seq)
}

impl Fabric {
    /// Creates the router namespace and a namespace per instance, all named
    /// after `tag` so two simulations never collide. On failure, whatever
    /// was made is removed again.
    pub fn create(tag: &str, vpc: &Vpc, options: FabricOptions) -> Result<Fabric, FabricError> {
        let mut fabric = Fabric {
            router: format!("vpcsim-{tag}-vpc"),
            nodes: BTreeMap::new(),
            gateway_macs: BTreeMap::new(),
            outside: None,
            mtu: options.mtu,
        };
        let made = fabric.build(tag, vpc, options);
        if made.is_err() {
            fabric.destroy();
        }
        made.map(|()| fabric)
    }

    fn build(&mut self, tag: &str, vpc: &Vpc, options: FabricOptions) -> Result<(), FabricError> {
        ip(&["netns", "add", &self.router])?;
        ip(&["-n", &self.router, "link", "set", "lo", "up"])?;
        // Forwarding without redirects (a node must keep sending to the
        // router), proxy ARP on every link made from now on, and no reverse
        // path filter (the router's own view of routes is not a VPC's rule).
        in_netns(
            &self.router,
            "echo 1 > /proc/sys/net/ipv4/ip_forward && \
             for c in all default; do \
               echo 0 > /proc/sys/net/ipv4/conf/$c/send_redirects && \
               echo 1 > /proc/sys/net/ipv4/conf/$c/proxy_arp && \
               echo 0 > /proc/sys/net/ipv4/conf/$c/rp_filter || exit 1; \
             done",
        )?;
        nft(&self.router, &checks::ruleset(options.source_check))?;
        self.build6(options.source_check)?;
        let mut batch = String::new();
        for (i, subnet) in vpc.subnets.values().enumerate() {
            let mac = format!("02:56:51:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff);
            self.gateway_macs.insert(subnet.id.clone(), mac);
            batch += &format!("addr add {}/32 dev lo\n", subnet.gateway());
            batch += &format!("route add {} dev lo\n", subnet.cidr);
        }
        ip_batch(&self.router, &batch)?;
        self.build_outside(tag, vpc)?;
        for (i, instance) in vpc.instances.keys().enumerate() {
            let ns = format!("vpcsim-{tag}-n{}", i + 1);
            ip(&["netns", "add", &ns])?;
            self.nodes.insert(instance.clone(), ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The outside namespace: `eth0` with [`OUTSIDE_HOST`], linked to the
    /// router's `out0` with [`OUTSIDE_GATEWAY`], and a route to the VPC.
    fn build_outside(&mut self, tag: &str, vpc: &Vpc) -> Result<(), FabricError> {
        let out = format!("vpcsim-{tag}-out");
        ip(&["netns", "add", &out])?;
        self.outside = Some(out.clone());
        ip(&["-n", &out, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &self.router,
            "link",
            "add",
            "out0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &out,
        ])?;
        let gw = format!("{OUTSIDE_GATEWAY}/{OUTSIDE_PREFIX}");
        ip(&["-n", &self.router, "addr", "add", &gw, "dev", "out0"])?;
        ip(&["-n", &self.router, "link", "set", "out0", "up"])?;
        let host = format!("{OUTSIDE_HOST}/{OUTSIDE_PREFIX}");
        ip(&["-n", &out, "addr", "add", &host, "dev", "eth0"])?;
        ip(&["-n", &out, "link", "set", "eth0", "up"])?;
        let vpc_cidr = vpc.cidr.to_string();
        let via = OUTSIDE_GATEWAY.to_string();
        ip(&["-n", &out, "route", "add", &vpc_cidr, "via", &via])
    }

    /// The path of a namespace by name.
    pub fn netns_path(name: &str) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(name)
    }

    /// Plugs an attached ENI into its node, with its primary IP, and has
    /// the router deliver every address it holds. A primary ENI also gets
    /// the subnet prefix and the node's default route, as a booted instance
    /// has.
    pub fn plug(&self, vpc: &Vpc, eni: &Eni) -> Result<(), FabricError> {
        let plugged = self.plug_links(vpc, eni);
        if plugged.is_err() {
            // Leave nothing half-made that the next attach would trip over.
            let _ = self.unplug(eni);
        }
        plugged
    }

    fn plug_links(&self, vpc: &Vpc, eni: &Eni) -> Result<(), FabricError> {
        let (Some(instance), Some(index)) = (&eni.attached_to, eni.device_index) else {
            return Ok(());
        };
        let Some(node) = self.nodes.get(instance) else {
            return Ok(());
        };
        let outside = router_link(eni);
        let inside = format!("eth{index}");
        let gateway_mac = &self.gateway_macs[&eni.subnet_id];
        let mtu = self.mtu.to_string();
        ip(&[
            "-n",
            &self.router,
            "link",
            "add",
            &outside,
            "address",
            gateway_mac,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "address",
            &eni.mac,
            "mtu",
            &mtu,
            "netns",
            node,
        ])?;
        // Proxy ARP answers at once, not after up to 0.8 s (the default
        // `proxy_delay`; a non-initial namespace has no `neigh/default`).
        in_netns(
            &self.router,
            &format!("echo 0 > /proc/sys/net/ipv4/neigh/{outside}/proxy_delay"),
        )?;
        ip(&["-n", &self.router, "link", "set", &outside, "up"])?;
        let subnet = &vpc.subnets[&eni.subnet_id];
        if eni.primary {
            let address = format!("{}/{}", eni.primary_ip, subnet.cidr.prefix);
            ip(&["-n", node, "addr", "add", &address, "dev", &inside])?;
            ip(&["-n", node, "link", "set", &inside, "up"])?;
            ip(&[
                "-n",
                node,
                "route",
                "add",
                "default",
                "via",
                &subnet.gateway().to_string(),
                "dev",
                &inside,
            ])?;
        } else {
            // A secondary ENI arrives with its primary IP, but routes are the
            // node's business (the agent gives it its own table).
            let address = format!("{}/32", eni.primary_ip);
            ip(&["-n", node, "addr", "add", &address, "dev", &inside])?;
        }
        let mut held = vec![eni.primary_ip];
        held.extend(&eni.secondary_ips);
        self.deliver(eni, &held)?;
        self.plug6(eni)?;
        if eni.primary {
            self.boot6(node, &inside, eni)?;
        }
        Ok(())
    }

    /// Unplugs an ENI (its node end, routes and neighbours go with its link).
    pub fn unplug(&self, eni: &Eni) -> Result<(), FabricError> {
        let mut held = vec![eni.primary_ip];
        held.extend(&eni.secondary_ips);
        let link = router_link(eni);
        nft(&self.router, &checks::forget(&link, &held))?;
        nft(&self.router, &checks::forget6(&link, &eni.ipv6_addresses))?;
        ignore_missing(ip(&["-n", &self.router, "link", "del", &link]))
    }

    /// Makes the VPC deliver `addrs` to `eni` (a route and a permanent
    /// neighbour each, replacing where they led before) and lets the ENI
    /// send from them.
    pub fn deliver(&self, eni: &Eni, addrs: &[Ipv4Addr]) -> Result<(), FabricError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let link = router_link(eni);
        let mut batch = String::new();
        for addr in addrs {
            batch += &format!("route replace {addr}/32 dev {link}\n");
            batch += &format!(
                "neigh replace {addr} lladdr {} dev {link} nud permanent\n",
                eni.mac
            );
        }
        ip_batch(&self.router, &batch)?;
        nft(&self.router, &checks::elements("add", &link, addrs))
    }

    /// Stops delivering `addrs` to `eni` and letting it send from them. A
    /// route that already leads elsewhere (the address moved) is left alone.
    pub fn withdraw(&self, eni: &Eni, addrs: &[Ipv4Addr]) -> Result<(), FabricError> {
        let link = router_link(eni);
        for addr in addrs {
            let a = addr.to_string();
            ignore_missing(ip(&["-n", &self.router, "neigh", "del", &a, "dev", &link]))?;
            ignore_missing(ip(&[
                "-n",
                &self.router,
                "route",
                "del",
                &format!("{a}/32"),
                "dev",
                &link,
            ]))?;
        }
        nft(&self.router, &checks::forget(&link, addrs))
    }

    /// Turns the source/destination check on (drop) or off (count only).
    pub fn set_source_check(&self, enforce: bool) -> Result<(), FabricError> {
        nft(&self.router, &checks::switch(enforce))
    }

    /// Whether the source/destination check drops.
    pub fn source_check(&self) -> Result<bool, FabricError> {
        let json = nft_output(
            &self.router,
            &["-j", "list", "chain", "ip", checks::TABLE, "source-check"],
        )?;
        checks::parse_enforcing(&json).map_err(FabricError::Parse)
    }

    /// What the source/destination check caught so far, per router link
    /// and source, IPv4 and IPv6.
    pub fn spoofed(&self) -> Result<Vec<checks::Spoofed>, FabricError> {
        let mut all = Vec::new();
        for family in ["ip", "ip6"] {
            let json = nft_output(
                &self.router,
                &["-j", "list", "set", family, checks::TABLE, checks::SPOOFED],
            )?;
            all.extend(checks::parse_spoofed(&json).map_err(FabricError::Parse)?);
        }
        Ok(all)
    }

    /// Packets sent to addresses no ENI holds, dropped by the router
    /// (IPv4 and IPv6).
    pub fn unheld(&self) -> Result<u64, FabricError> {
        let mut packets = 0;
        for family in ["ip", "ip6"] {
            let json = nft_output(
                &self.router,
                &["-j", "list", "counter", family, checks::TABLE, "unheld"],
            )?;
            packets += checks::parse_counter(&json).map_err(FabricError::Parse)?;
        }
        Ok(packets)
    }

    /// Deletes every namespace of the fabric; returns what could not be
    /// deleted (missing ones are fine).
    pub fn destroy(&self) -> Vec<FabricError> {
        self.nodes
            .values()
            .chain([&self.router])
            .chain(self.outside.as_ref())
            .filter_map(|ns| ignore_missing(ip(&["netns", "del", ns])).err())
            .collect()
    }
}

/// Runs `ip -n NETNS -batch -` with `commands`, one per line.
fn ip_batch(netns: &str, commands: &str) -> Result<(), FabricError> {
    batch(netns, "-4", commands)
}

/// [`ip_batch`] for IPv6 (`ip -6`).
fn ip6_batch(netns: &str, commands: &str) -> Result<(), FabricError> {
    batch(netns, "-6", commands)
}

fn batch(netns: &str, family: &str, commands: &str) -> Result<(), FabricError> {
    if commands.is_empty() {
        return Ok(());
    }
    run_with_input(
        Command::new("ip").args([family, "-n", netns, "-batch", "-"]),
        commands,
        &format!("ip {family} -n {netns} -batch - <<< {commands:?}"),
    )
}

/// Runs `nft -f -` inside a namespace with `script`.
fn nft(netns: &str, script: &str) -> Result<(), FabricError> {
    if script.is_empty() {
        return Ok(());
    }
    run_with_input(
        Command::new("ip").args(["netns", "exec", netns, "nft", "-f", "-"]),
        script,
        &format!("nft -f - <<< {script:?} (in {netns})"),
    )
}

/// What `nft ARGS` prints inside a namespace.
fn nft_output(netns: &str, args: &[&str]) -> Result<String, FabricError> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft"])
        .args(args)
        .output()
        .map_err(FabricError::Spawn)?;
    let out = succeeded(out, &format!("nft {} (in {netns})", args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_with_input(cmd: &mut Command, input: &str, shown: &str) -> Result<(), FabricError> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FabricError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(FabricError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(FabricError::Spawn)?;
    succeeded(out, shown).map(drop)
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<(), FabricError> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

/// Runs a shell snippet inside a named namespace (for `/proc/sys` writes).
pub fn in_netns(netns: &str, script: &str) -> Result<(), FabricError> {
    run(
        Command::new("ip").args(["netns", "exec", netns, "sh", "-c", script]),
        &format!("ip netns exec {netns} sh -c '{script}'"),
    )
}

fn run(cmd: &mut Command, shown: &str) -> Result<(), FabricError> {
    let out = cmd.output().map_err(FabricError::Spawn)?;
    succeeded(out, shown).map(drop)
}

/// `out` when its command succeeded, else the failure with what it printed.
fn succeeded(out: std::process::Output, shown: &str) -> Result<std::process::Output, FabricError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(FabricError::Command {
            command: shown.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ignore_missing(r: Result<(), FabricError>) -> Result<(), FabricError> {
    match r {
        Err(e) if missing(&e) => Ok(()),
        other => other,
    }
}

/// Whether a failure only says the thing to remove is not there.
fn missing(e: &FabricError) -> bool {
    matches!(e, FabricError::Command { stderr, .. }
        if stderr.contains("Cannot find device")
            || stderr.contains("No such file")
            || stderr.contains("No such process")
            || stderr.contains("not found"))
}
