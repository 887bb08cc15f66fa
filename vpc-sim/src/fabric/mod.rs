//! The fabric: what makes the model's ENIs real links. One network
//! namespace plays the VPC router and holds one bridge per subnet with the
//! subnet's gateway address; every node is a network namespace. Attaching
//! an ENI creates a veth pair whose node end appears in the node as
//! `eth<device index>` with the ENI's MAC and whose other end joins the
//! subnet's bridge. Assigning a secondary IP adds a permanent neighbour
//! entry on the router so the VPC delivers that IP to the ENI's MAC, as a
//! cloud's VPC does; unassigning removes it.
//!
//! Behind the router, an "outside" namespace stands for everything beyond
//! the VPC (the internet, an on-premises network): one host,
//! [`OUTSIDE_HOST`], on a link to the router's [`OUTSIDE_GATEWAY`], with a
//! route back to the VPC's CIDR through the router. The router forwards
//! without NAT, so the outside host sees whatever source address a node
//! sends: with the agent's egress masquerade, the node's primary address.
//!
//! The fabric is simulator tooling, so it drives iproute2 (`ip`) rather
//! than netlink: it runs only when ENIs come and go, never on a pod's path.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

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
    /// `ip` could not be run.
    #[error("cannot run `ip` (is iproute2 installed?): {0}")]
    Spawn(#[source] std::io::Error),
}

/// The fabric of one simulated VPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fabric {
    /// The router's namespace name.
    pub router: String,
    /// Node namespace names by instance id.
    pub nodes: BTreeMap<String, String>,
    /// Bridge names by subnet id.
    pub bridges: BTreeMap<String, String>,
    /// The outside namespace's name (absent in worlds made before it).
    #[serde(default)]
    pub outside: Option<String>,
}

impl Fabric {
    /// Creates the router namespace and a bridge per subnet of `vpc`, and a
    /// namespace per instance, all named after `tag` so two simulations
    /// never collide. On failure, whatever was made is removed again.
    pub fn create(tag: &str, vpc: &Vpc) -> Result<Fabric, FabricError> {
        let mut fabric = Fabric {
            router: format!("vpcsim-{tag}-vpc"),
            nodes: BTreeMap::new(),
            bridges: BTreeMap::new(),
            outside: None,
        };
        let made = fabric.build(tag, vpc);
        if made.is_err() {
            fabric.destroy();
        }
        made.map(|()| fabric)
    }

    fn build(&mut self, tag: &str, vpc: &Vpc) -> Result<(), FabricError> {
        ip(&["netns", "add", &self.router])?;
        ip(&["-n", &self.router, "link", "set", "lo", "up"])?;
        in_netns(
            &self.router,
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects",
        )?;
        for (i, subnet) in vpc.subnets.values().enumerate() {
            let bridge = format!("br{i}");
            // A fixed address: a bridge otherwise takes the lowest of its
            // ports' and, when that changes as ENIs come and go, flushes its
            // neighbour table, permanent entries (the delivered IPs) included.
            let mac = format!("02:56:51:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff);
            ip(&[
                "-n",
                &self.router,
                "link",
                "add",
                &bridge,
                "address",
                &mac,
                "type",
                "bridge",
            ])?;
            let gw = format!("{}/{}", subnet.gateway(), subnet.cidr.prefix);
            ip(&["-n", &self.router, "addr", "add", &gw, "dev", &bridge])?;
            ip(&["-n", &self.router, "link", "set", &bridge, "up"])?;
            self.bridges.insert(subnet.id.clone(), bridge);
        }
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
    /// router's `ext0` with [`OUTSIDE_GATEWAY`], and a route to the VPC.
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
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &out,
        ])?;
        let gw = format!("{OUTSIDE_GATEWAY}/{OUTSIDE_PREFIX}");
        ip(&["-n", &self.router, "addr", "add", &gw, "dev", "ext0"])?;
        ip(&["-n", &self.router, "link", "set", "ext0", "up"])?;
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

    /// Plugs an attached ENI into its node and subnet, with its primary IP.
    /// A primary ENI also gets the subnet prefix and the node's default
    /// route, as a booted instance has.
    pub fn plug(&self, vpc: &Vpc, eni: &Eni) -> Result<(), FabricError> {
        let plugged = self.plug_links(vpc, eni);
        if plugged.is_err() {
            // Leave nothing half-made that the next attach would trip over.
            let _ = ip(&["-n", &self.router, "link", "del", &format!("e{}", eni.seq)]);
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
        let outside = format!("e{}", eni.seq);
        let inside = format!("eth{index}");
        let bridge = &self.bridges[&eni.subnet_id];
        ip(&[
            "-n",
            &self.router,
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "address",
            &eni.mac,
            "netns",
            node,
        ])?;
        ip(&[
            "-n",
            &self.router,
            "link",
            "set",
            &outside,
            "master",
            bridge,
            "up",
        ])?;
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
        for ip in &eni.secondary_ips {
            self.deliver(&eni.subnet_id, *ip, &eni.mac)?;
        }
        Ok(())
    }

    /// Unplugs an ENI (its node end goes with it).
    pub fn unplug(&self, eni: &Eni) -> Result<(), FabricError> {
        for ip in &eni.secondary_ips {
            self.withdraw(&eni.subnet_id, *ip)?;
        }
        ignore_missing(ip(&[
            "-n",
            &self.router,
            "link",
            "del",
            &format!("e{}", eni.seq),
        ]))
    }

    /// Makes the VPC deliver `addr` to the ENI with `mac`.
    pub fn deliver(&self, subnet_id: &str, addr: Ipv4Addr, mac: &str) -> Result<(), FabricError> {
        let bridge = &self.bridges[subnet_id];
        ip(&[
            "-n",
            &self.router,
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            mac,
            "dev",
            bridge,
            "nud",
            "permanent",
        ])
    }

    /// Stops delivering `addr`.
    pub fn withdraw(&self, subnet_id: &str, addr: Ipv4Addr) -> Result<(), FabricError> {
        let bridge = &self.bridges[subnet_id];
        ignore_missing(ip(&[
            "-n",
            &self.router,
            "neigh",
            "del",
            &addr.to_string(),
            "dev",
            bridge,
        ]))
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
    if out.status.success() {
        Ok(())
    } else {
        Err(FabricError::Command {
            command: shown.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ignore_missing(r: Result<(), FabricError>) -> Result<(), FabricError> {
    match r {
        Err(FabricError::Command { stderr, .. })
            if stderr.contains("Cannot find device")
                || stderr.contains("No such file")
                || stderr.contains("No such process")
                || stderr.contains("not found") =>
        {
            Ok(())
        }
        other => other,
    }
}
