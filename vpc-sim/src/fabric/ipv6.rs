//! IPv6 through the fabric, as a real VPC carries it: the router is the
//! gateway of every ENI's link at the link-local address `fe80::1` (with the
//! subnet gateway's MAC), so a node routes IPv6 to `fe80::1` and never needs
//! a neighbour on the subnet; the router delivers each address an ENI
//! holds by a /128 route to its link with a permanent neighbour entry, a
//! subnet's block that no ENI holds meets a `blackhole` route (dropped and
//! counted, `checks::ruleset6`), and the source/destination check applies
//! to IPv6 as to IPv4. The router never sends router advertisements: a
//! node's IPv6 addresses and routes are its agent's business, as its IPv4
//! ones on secondary ENIs are.

use std::net::Ipv6Addr;

use super::{Fabric, FabricError, checks, in_netns, ip, ip6_batch, nft, router_link};
use crate::ipv6::Cidr6;
use crate::model::Eni;

/// The router's address on every ENI's link: the IPv6 gateway.
pub const GATEWAY6: &str = "fe80::1";

impl Fabric {
    /// IPv6 in the router: forwarding, no duplicate address detection (its
    /// `fe80::1` on every link is usable at once), no router advertisements
    /// taken, and the IPv6 table of the checks.
    pub(super) fn build6(&self, source_check: bool) -> Result<(), FabricError> {
        in_netns(
            &self.router,
            "for c in all default; do \
               echo 1 > /proc/sys/net/ipv6/conf/$c/forwarding && \
               echo 0 > /proc/sys/net/ipv6/conf/$c/accept_dad && \
               echo 0 > /proc/sys/net/ipv6/conf/$c/accept_ra || exit 1; \
             done",
        )?;
        nft(&self.router, &checks::ruleset6(source_check))
    }

    /// The router's end of a new ENI link becomes its IPv6 gateway, and
    /// the ENI's IPv6 addresses are delivered.
    pub(super) fn plug6(&self, eni: &Eni) -> Result<(), FabricError> {
        let link = router_link(eni);
        ip(&[
            "-n",
            &self.router,
            "-6",
            "addr",
            "add",
            &format!("{GATEWAY6}/64"),
            "dev",
            &link,
            "nodad",
        ])?;
        self.deliver6(eni, &eni.ipv6_addresses)
    }

    /// A primary ENI's IPv6 addresses in its node, as a booted instance
    /// has them: each alone (a /128), IPv6 routed to the gateway.
    pub(super) fn boot6(&self, node: &str, dev: &str, eni: &Eni) -> Result<(), FabricError> {
        if eni.ipv6_addresses.is_empty() {
            return Ok(());
        }
        let mut batch: String = eni
            .ipv6_addresses
            .iter()
            .map(|a| format!("addr add {a}/128 dev {dev} nodad\n"))
            .collect();
        batch += &format!("route add default via {GATEWAY6} dev {dev}\n");
        ip6_batch(node, &batch)
    }

    /// Routes the subnets' `blocks` nowhere but where an ENI holds an
    /// address (the /128 routes are longer).
    pub fn add_blocks6(&self, blocks: &[Cidr6]) -> Result<(), FabricError> {
        let batch: String = blocks
            .iter()
            .map(|b| format!("route replace blackhole {b}\n"))
            .collect();
        ip6_batch(&self.router, &batch)
    }

    /// Makes the VPC deliver the IPv6 `addrs` to `eni` and lets the ENI
    /// send from them.
    pub fn deliver6(&self, eni: &Eni, addrs: &[Ipv6Addr]) -> Result<(), FabricError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let link = router_link(eni);
        let mut batch = String::new();
        for addr in addrs {
            batch += &format!("route replace {addr}/128 dev {link}\n");
            batch += &format!(
                "neigh replace {addr} lladdr {} dev {link} nud permanent\n",
                eni.mac
            );
        }
        ip6_batch(&self.router, &batch)?;
        nft(&self.router, &checks::elements6("add", &link, addrs))
    }

    /// Stops delivering the IPv6 `addrs` to `eni` and letting it send
    /// from them.
    pub fn withdraw6(&self, eni: &Eni, addrs: &[Ipv6Addr]) -> Result<(), FabricError> {
        let link = router_link(eni);
        for addr in addrs {
            let a = addr.to_string();
            super::ignore_missing(ip(&[
                "-n",
                &self.router,
                "-6",
                "neigh",
                "del",
                &a,
                "dev",
                &link,
            ]))?;
            super::ignore_missing(ip(&[
                "-n",
                &self.router,
                "-6",
                "route",
                "del",
                &format!("{a}/128"),
                "dev",
                &link,
            ]))?;
        }
        nft(&self.router, &checks::forget6(&link, addrs))
    }
}
