//! An ENI on the node: found by its MAC (waiting for it to appear), up
//! with its primary address, its own route table, loose reverse-path
//! filtering and no ARP flux; its MTU read from the link.
//! `ip link set ethN up; ip addr add IP/32 dev ethN; ip route replace GW
//! dev ethN table T; ip route replace default via GW dev ethN table T;
//! sysctl net.ipv4.conf.ethN.{rp_filter=2,arp_announce=2,arp_ignore=1}`.

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
        debug!(eni = %eni.id, link = %name, table = eni.table, mtu, "ENI programmed");
        Ok(mtu)
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
