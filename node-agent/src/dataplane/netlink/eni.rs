//! An ENI on the node: found by its MAC (waiting for it to appear), up
//! with its primary address, its own route table, loose reverse-path
//! filtering and no ARP flux; its MTU read from the link.
//! `ip link set ethN up; ip addr add IP/32 dev ethN; ip route replace GW
//! dev ethN table T; ip route replace default via GW dev ethN table T;
//! sysctl net.ipv4.conf.ethN.{rp_filter=2,arp_announce=2,arp_ignore=1}`;
//! with IPv6, also `sysctl net.ipv6.conf.all.forwarding=1
//! net.ipv6.conf.ethN.{disable_ipv6=0,accept_ra=0}; ip -6 route replace
//! default via fe80::1 dev ethN table T`, and the ENI's own IPv6 address
//! once it has one (`ip -6 addr add IP/128 dev ethN nodad`).

use std::net::IpAddr;
use std::time::Duration;

use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use tracing::debug;

use super::{
    EEXIST, NetlinkDataplane, find_mac, io_err, kernel, link_name, messages, netns, open_path,
    tolerate,
};
use crate::dataplane::DataplaneError;
use crate::ipam::EniRecord;

/// How long `program_eni` waits for an attached ENI's link to appear.
const ENI_LINK_WAIT: Duration = Duration::from_secs(10);

impl NetlinkDataplane {
    /// [`Dataplane::program_eni`](crate::dataplane::Dataplane::program_eni).
    pub(super) async fn program(&self, eni: &EniRecord) -> Result<u32, DataplaneError> {
        let link = wait_for_mac(&self.node, &eni.mac).await?;
        let index = link.header.index;
        let name = link_name(&link).unwrap_or_default();
        // The link's MTU is the VPC's (set with the link, by DHCP or the
        // image): read, never overridden.
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(eni.mtu);
        self.node
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| kernel("ip link set up", e))?;
        tolerate(
            self.node
                .address()
                .add(index, IpAddr::V4(eni.primary_ip), 32)
                .execute()
                .await,
            &[EEXIST],
        )
        .map_err(|e| kernel("ip addr add", e))?;
        self.node
            .route()
            .add(messages::eni_gateway_route(eni.gateway, index, eni.table))
            .replace()
            .execute()
            .await
            .map_err(|e| kernel("ip route replace (ENI gateway)", e))?;
        self.node
            .route()
            .add(messages::eni_default_route(eni.gateway, index, eni.table))
            .replace()
            .execute()
            .await
            .map_err(|e| kernel("ip route replace (ENI default)", e))?;
        // Replies to a pod leave by its ENI while the main table points the
        // subnet elsewhere: loose reverse-path filtering on the ENI. The
        // node's ENIs share a subnet, so no ARP flux: an ARP request
        // leaving this ENI carries its own address (`arp_announce` 2),
        // and it answers only for its own addresses (`arp_ignore` 1), not
        // for the primary ENI's.
        for (key, value) in [
            ("rp_filter", "2"),
            ("arp_announce", "2"),
            ("arp_ignore", "1"),
        ] {
            netns::write_sysctl(
                open_path(self.node_netns.as_deref())?,
                &format!("net/ipv4/conf/{name}/{key}"),
                value,
            )
            .await
            .map_err(io_err("sysctl (ENI rp_filter, arp_announce, arp_ignore)"))?;
        }
        if self.ipv6 {
            self.program_v6(index, &name, eni.table).await?;
            if let Some(own) = eni.own_ipv6() {
                // What the node sends out of the ENI (a NodePort's
                // masqueraded traffic to another node's pod) takes an
                // address the ENI holds, not the primary ENI's.
                let mut add = self.node.address().add(index, IpAddr::V6(own), 128);
                *add.message_mut() = messages::pod_address(IpAddr::V6(own), index);
                tolerate(add.execute().await, &[EEXIST])
                    .map_err(|e| kernel("ip -6 addr add (ENI's own)", e))?;
            }
        }
        debug!(eni = %eni.id, link = %name, table = eni.table, mtu, ipv6 = self.ipv6, "ENI programmed");
        Ok(mtu)
    }
}

impl NetlinkDataplane {
    /// The ENI's IPv6 part: the node forwards IPv6, the ENI has IPv6 on
    /// and takes no router advertisements (its table's default route is
    /// ours), and its table sends IPv6 to the VPC's router at `fe80::1`.
    async fn program_v6(&self, index: u32, name: &str, table: u32) -> Result<(), DataplaneError> {
        for (path, value) in [
            ("net/ipv6/conf/all/forwarding".to_string(), "1"),
            (format!("net/ipv6/conf/{name}/disable_ipv6"), "0"),
            (format!("net/ipv6/conf/{name}/accept_ra"), "0"),
        ] {
            netns::write_sysctl(open_path(self.node_netns.as_deref())?, &path, value)
                .await
                .map_err(io_err("sysctl (IPv6 forwarding, ENI IPv6 on, no RA)"))?;
        }
        self.node
            .route()
            .add(messages::eni_default_route_v6(index, table))
            .replace()
            .execute()
            .await
            .map_err(|e| kernel("ip -6 route replace (ENI default)", e))
    }
}

async fn wait_for_mac(handle: &Handle, mac: &str) -> Result<LinkMessage, DataplaneError> {
    let deadline = tokio::time::Instant::now() + ENI_LINK_WAIT;
    loop {
        if let Some(link) = find_mac(handle, mac).await? {
            return Ok(link);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DataplaneError::Kernel {
                op: "ip link show",
                detail: format!("no link with MAC {mac} appeared within {ENI_LINK_WAIT:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
