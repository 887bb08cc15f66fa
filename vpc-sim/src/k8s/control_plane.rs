//! The control plane's own network namespace, as a managed control plane
//! (TKE's, say) sits beside the VPC: `vpcsim-<tag>-cp`, with
//!
//! - `mgmt0` on the cluster's management bridge, holding the control
//!   plane's address (`<prefix>.1`): the host (kubectl, the tests), the
//!   nodes' kubelets and agents reach the API server, etcd and the VPC
//!   API emulator there, and the API server reaches the kubelets;
//! - `vpc0`, a link to the VPC's router (`cp0` there) on the first /30 of
//!   the VPC's block, which no subnet of the simulation takes (they start
//!   at `10.0.16.0/20`), with a route to the rest of the block: the API
//!   server reaches pods' own addresses (`pods/proxy`, Services' proxy,
//!   webhooks on pod IPs) as a managed control plane reaches them through
//!   its own ENI in the VPC. Being inside the VPC's block, it is a
//!   destination pods answer from their own ENI (no masquerade), as the
//!   VPC's source/destination check wants.
//!
//! The host itself keeps `<prefix>.254` on the bridge and has no route into
//! the VPC, so two simulations, both on 10.0.0.0/16, never meet.

use std::net::Ipv4Addr;

use crate::fabric::ip;

/// The router's and the control plane's ends of their link: the first /30
/// of the VPC's block `vpc_cidr` (`A.B.C.D/N`).
pub fn link_addresses(vpc_cidr: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let network: Ipv4Addr = vpc_cidr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("not a CIDR block: {vpc_cidr}"))?;
    let base = u32::from(network);
    Ok((Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)))
}

/// The namespace's name for a simulation's tag.
pub fn netns_name(tag: &str) -> String {
    format!("vpcsim-{tag}-cp")
}

/// The host's address on the management bridge.
pub fn host_address(prefix: &str) -> String {
    format!("{prefix}.254")
}

/// `nsenter --net=<netns> --`: what every control-plane process starts through.
pub fn wrapper(netns: &str) -> Vec<String> {
    vec![
        "nsenter".to_string(),
        format!(
            "--net={}",
            crate::fabric::Fabric::netns_path(netns).display()
        ),
        "--".into(),
    ]
}

/// Creates the namespace, its link to `bridge` with `control_ip`/24 and its
/// link to the VPC's `router` with a route to `vpc_cidr`.
pub fn create(
    tag: &str,
    bridge: &str,
    control_ip: &str,
    router: &str,
    vpc_cidr: &str,
) -> Result<String, String> {
    let ns = netns_name(tag);
    let run = |args: &[&str]| ip(args).map_err(|e| e.to_string());
    run(&["netns", "add", &ns])?;
    run(&["-n", &ns, "link", "set", "lo", "up"])?;
    let host_end = format!("vk{tag}c");
    run(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "mgmt0", "netns", &ns,
    ])?;
    run(&["link", "set", &host_end, "master", bridge, "up"])?;
    run(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{control_ip}/24"),
        "dev",
        "mgmt0",
    ])?;
    run(&["-n", &ns, "link", "set", "mgmt0", "up"])?;
    let (router_side, control_side) = link_addresses(vpc_cidr)?;
    let router_side = router_side.to_string();
    run(&[
        "-n", router, "link", "add", "cp0", "type", "veth", "peer", "name", "vpc0", "netns", &ns,
    ])?;
    run(&[
        "-n",
        router,
        "addr",
        "add",
        &format!("{router_side}/30"),
        "dev",
        "cp0",
    ])?;
    run(&["-n", router, "link", "set", "cp0", "up"])?;
    run(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{control_side}/30"),
        "dev",
        "vpc0",
    ])?;
    run(&["-n", &ns, "link", "set", "vpc0", "up"])?;
    run(&[
        "-n",
        &ns,
        "route",
        "add",
        vpc_cidr,
        "via",
        &router_side,
        "dev",
        "vpc0",
    ])?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_stay_apart_from_the_vpc_and_the_host() {
        assert_eq!(netns_name("ab12cd"), "vpcsim-ab12cd-cp");
        assert_eq!(host_address("100.64.7"), "100.64.7.254");
        assert_eq!(
            wrapper("vpcsim-ab12cd-cp"),
            ["nsenter", "--net=/var/run/netns/vpcsim-ab12cd-cp", "--"]
        );
        let (router, control) = link_addresses("10.0.0.0/16").expect("valid");
        assert_eq!(
            (router.to_string(), control.to_string()),
            ("10.0.0.1".into(), "10.0.0.2".into())
        );
        assert!(link_addresses("nonsense").is_err());
    }
}
