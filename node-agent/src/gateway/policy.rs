//! What the cloud gateway lets a node do: read anything, and change only
//! what is its own. An ENI is a node's when it carries the node's tag
//! (`vpc-cni/node` = its instance id), which the gateway itself checked
//! when the ENI was created and which no node can change; an address of
//! another node's ENI comes to a node only for the pod whose claim names
//! that node as the holder (a static IP's move). Pure: the facts are asked
//! through [`Facts`].

use std::future::Future;

use serde_json::Value;

use crate::cloud::CloudError;
use crate::cloud::tencent::{TAG_CLUSTER, TAG_NODE};

/// Who is calling, as the cluster vouches for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The Kubernetes node the caller's pod runs on.
    pub node: String,
    /// Its instance id.
    pub instance: String,
    /// Its instance type (the Node's `node.kubernetes.io/instance-type`),
    /// when known: nodes of one type share their limits.
    pub instance_type: Option<String>,
}

/// What a call must show before it goes to the cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing more: a read, or an ENI created with the caller's tags.
    Nothing,
    /// The ENI is the caller's.
    OwnEni(String),
    /// The address moves from ENI `from` to the caller's ENI `to`: `from`
    /// is the caller's too, or the claim of `ip` names the caller's node.
    Move {
        /// The source ENI.
        from: String,
        /// The destination ENI.
        to: String,
        /// The address.
        ip: String,
    },
    /// IPv6 addresses leave ENI `eni`: it is the caller's, or each of
    /// `ips` is the IPv6 address of a claim naming the caller's node (a
    /// static IP's IPv6 address following it to its new holder).
    TakeOff {
        /// The ENI.
        eni: String,
        /// The addresses.
        ips: Vec<String>,
    },
}

/// What the gateway knows of the cloud and the cluster.
pub trait Facts: Send + Sync {
    /// The instance an ENI is tagged for (`vpc-cni/node`); `Ok(None)`
    /// when there is no such ENI or it carries no such tag.
    fn eni_node(&self, id: &str)
    -> impl Future<Output = Result<Option<String>, CloudError>> + Send;
    /// The node the `VpcIPClaim` holding `ip` (its address, or its IPv6
    /// address) names, if one does.
    fn claim_holder(&self, ip: &str) -> Option<String>;
}

/// What `action` with `params` must show for `caller` of cluster
/// `cluster`; `Err` with the reason when no node may make it.
pub fn needs(caller: &Caller, cluster: &str, action: &str, params: &Value) -> Result<Need, String> {
    let field = |k: &str| -> Result<String, String> {
        params
            .get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("{action} without {k}"))
    };
    let on_own_instance = || -> Result<(), String> {
        let instance = field("InstanceId")?;
        if instance == caller.instance {
            Ok(())
        } else {
            Err(format!(
                "{action} for instance {instance}: node {} is instance {}",
                caller.node, caller.instance
            ))
        }
    };
    match action {
        a if a.starts_with("Describe") => Ok(Need::Nothing),
        "CreateNetworkInterface" => {
            let tag = |key: &str| {
                params
                    .get("Tags")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|t| t.get("Key").and_then(Value::as_str) == Some(key))
                    .and_then(|t| t.get("Value").and_then(Value::as_str))
            };
            if tag(TAG_NODE) != Some(caller.instance.as_str()) {
                return Err(format!(
                    "CreateNetworkInterface must tag the ENI {TAG_NODE}={}",
                    caller.instance
                ));
            }
            if tag(TAG_CLUSTER) != Some(cluster) {
                return Err(format!(
                    "CreateNetworkInterface must tag the ENI {TAG_CLUSTER}={cluster}"
                ));
            }
            Ok(Need::Nothing)
        }
        "AttachNetworkInterface" | "DetachNetworkInterface" => {
            on_own_instance()?;
            Ok(Need::OwnEni(field("NetworkInterfaceId")?))
        }
        "DeleteNetworkInterface"
        | "AssignPrivateIpAddresses"
        | "UnassignPrivateIpAddresses"
        | "AssignIpv6Addresses" => Ok(Need::OwnEni(field("NetworkInterfaceId")?)),
        "UnassignIpv6Addresses" => {
            let ips: Vec<String> = params
                .get("Ipv6Addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("Address").and_then(Value::as_str))
                .map(str::to_string)
                .collect();
            Ok(Need::TakeOff {
                eni: field("NetworkInterfaceId")?,
                ips,
            })
        }
        "MigratePrivateIpAddress" => Ok(Need::Move {
            from: field("SourceNetworkInterfaceId")?,
            to: field("DestinationNetworkInterfaceId")?,
            ip: field("PrivateIpAddress")?,
        }),
        other => Err(format!("{other} is not an action of vpc-cni's nodes")),
    }
}

/// Whether `caller` shows what `need` asks; `Err` with the reason not.
pub async fn judge(caller: &Caller, need: &Need, facts: &impl Facts) -> Result<(), Refusal> {
    let own = |id: String| async move {
        match facts.eni_node(&id).await.map_err(Refusal::Unknown)? {
            Some(node) if node == caller.instance => Ok(()),
            Some(node) => Err(Refusal::Denied(format!(
                "ENI {id} is node {node}'s, not {}'s",
                caller.instance
            ))),
            None => Err(Refusal::Denied(format!(
                "ENI {id} is no ENI of vpc-cni's nodes"
            ))),
        }
    };
    match need {
        Need::Nothing => Ok(()),
        Need::OwnEni(id) => own(id.clone()).await,
        Need::Move { from, to, ip } => {
            own(to.clone()).await?;
            if own(from.clone()).await.is_ok() {
                return Ok(());
            }
            match facts.claim_holder(ip) {
                Some(node) if node == caller.node => Ok(()),
                Some(node) => Err(Refusal::Denied(format!(
                    "address {ip} is claimed by node {node}, not {}",
                    caller.node
                ))),
                None => Err(Refusal::Denied(format!(
                    "address {ip} of ENI {from} is not the caller's and no claim brings it to node {}",
                    caller.node
                ))),
            }
        }
        Need::TakeOff { eni, ips } => {
            let Err(not_own) = own(eni.clone()).await else {
                return Ok(());
            };
            if ips.is_empty() {
                return Err(not_own);
            }
            for ip in ips {
                match facts.claim_holder(ip) {
                    Some(node) if node == caller.node => {}
                    Some(node) => {
                        return Err(Refusal::Denied(format!(
                            "address {ip} is claimed by node {node}, not {}",
                            caller.node
                        )));
                    }
                    None => {
                        return Err(Refusal::Denied(format!(
                            "address {ip} of ENI {eni} is not the caller's and no claim brings it to node {}",
                            caller.node
                        )));
                    }
                }
            }
            Ok(())
        }
    }
}

/// Why a call was not let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It is not the caller's to make (`UnauthorizedOperation`).
    Denied(String),
    /// The facts could not be had (the caller may try again).
    Unknown(CloudError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct World {
        enis: HashMap<&'static str, &'static str>,
        claims: HashMap<&'static str, &'static str>,
    }

    impl Facts for World {
        async fn eni_node(&self, id: &str) -> Result<Option<String>, CloudError> {
            Ok(self.enis.get(id).map(|n| n.to_string()))
        }
        fn claim_holder(&self, ip: &str) -> Option<String> {
            self.claims.get(ip).map(|n| n.to_string())
        }
    }

    fn world() -> World {
        World {
            enis: HashMap::from([("eni-a", "ins-a"), ("eni-a2", "ins-a"), ("eni-b", "ins-b")]),
            claims: HashMap::from([
                ("10.0.0.7", "node-a"),
                ("10.0.0.8", "node-b"),
                ("fd00::7", "node-a"),
                ("fd00::8", "node-b"),
            ]),
        }
    }

    fn a() -> Caller {
        Caller {
            node: "node-a".into(),
            instance: "ins-a".into(),
            instance_type: None,
        }
    }

    async fn verdict(action: &str, params: Value) -> Result<(), String> {
        let need = needs(&a(), "c1", action, &params)?;
        judge(&a(), &need, &world())
            .await
            .map_err(|r| format!("{r:?}"))
    }

    #[tokio::test]
    async fn a_node_changes_its_own_enis_and_only_those() {
        for action in [
            "AssignPrivateIpAddresses",
            "UnassignPrivateIpAddresses",
            "AssignIpv6Addresses",
            "UnassignIpv6Addresses",
            "DeleteNetworkInterface",
        ] {
            assert_eq!(
                verdict(action, json!({"NetworkInterfaceId": "eni-a"})).await,
                Ok(())
            );
            let theirs = verdict(action, json!({"NetworkInterfaceId": "eni-b"})).await;
            assert!(
                theirs.is_err_and(|e| e.contains("node ins-b's")),
                "{action}"
            );
            assert!(
                verdict(action, json!({"NetworkInterfaceId": "eni-x"}))
                    .await
                    .is_err()
            );
        }
        let mine = json!({"NetworkInterfaceId": "eni-a", "InstanceId": "ins-a"});
        assert_eq!(
            verdict("AttachNetworkInterface", mine.clone()).await,
            Ok(())
        );
        assert_eq!(verdict("DetachNetworkInterface", mine).await, Ok(()));
        // Its own ENI onto another instance, or another's off it.
        let elsewhere = json!({"NetworkInterfaceId": "eni-a", "InstanceId": "ins-b"});
        assert!(
            verdict("DetachNetworkInterface", elsewhere.clone())
                .await
                .is_err()
        );
        assert!(verdict("AttachNetworkInterface", elsewhere).await.is_err());
        let theirs = json!({"NetworkInterfaceId": "eni-b", "InstanceId": "ins-a"});
        assert!(verdict("AttachNetworkInterface", theirs).await.is_err());
    }

    #[tokio::test]
    async fn reads_pass_and_unknown_actions_do_not() {
        assert_eq!(
            verdict("DescribeNetworkInterfaces", json!({})).await,
            Ok(())
        );
        assert_eq!(verdict("DescribeSubnets", json!({})).await, Ok(()));
        for action in [
            "DeleteSubnet",
            "ModifyNetworkInterfaceAttribute",
            "CreateVpc",
            // The VPC's and subnets' IPv6 blocks are the operator's.
            "AssignIpv6CidrBlock",
            "AssignIpv6SubnetCidrBlock",
        ] {
            assert!(verdict(action, json!({})).await.is_err(), "{action}");
        }
        // A missing id is not "any ENI".
        assert!(
            verdict("AssignPrivateIpAddresses", json!({}))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn new_enis_carry_the_callers_tags() {
        let tags = |node: &str, cluster: &str| json!({"Tags": [{"Key": TAG_CLUSTER, "Value": cluster}, {"Key": TAG_NODE, "Value": node}]});
        assert_eq!(
            verdict("CreateNetworkInterface", tags("ins-a", "c1")).await,
            Ok(())
        );
        assert!(
            verdict("CreateNetworkInterface", tags("ins-b", "c1"))
                .await
                .is_err()
        );
        assert!(
            verdict("CreateNetworkInterface", tags("ins-a", "c2"))
                .await
                .is_err()
        );
        assert!(verdict("CreateNetworkInterface", json!({})).await.is_err());
    }

    #[tokio::test]
    async fn another_nodes_address_comes_only_with_its_claim() {
        let migrate = |from: &str, to: &str, ip: &str| json!({"SourceNetworkInterfaceId": from, "DestinationNetworkInterfaceId": to, "PrivateIpAddress": ip});
        // The claim names this node: the static IP follows its pod here.
        assert_eq!(
            verdict(
                "MigratePrivateIpAddress",
                migrate("eni-b", "eni-a", "10.0.0.7")
            )
            .await,
            Ok(())
        );
        // Claimed by the other node, or by nobody: refused.
        let denied = verdict(
            "MigratePrivateIpAddress",
            migrate("eni-b", "eni-a", "10.0.0.8"),
        )
        .await;
        assert!(denied.is_err_and(|e| e.contains("claimed by node node-b")));
        assert!(
            verdict(
                "MigratePrivateIpAddress",
                migrate("eni-b", "eni-a", "10.0.0.9")
            )
            .await
            .is_err()
        );
        // Between its own ENIs, no claim is needed; never onto another's.
        assert_eq!(
            verdict(
                "MigratePrivateIpAddress",
                migrate("eni-a2", "eni-a", "10.0.0.9")
            )
            .await,
            Ok(())
        );
        assert!(
            verdict(
                "MigratePrivateIpAddress",
                migrate("eni-a", "eni-b", "10.0.0.7")
            )
            .await
            .is_err()
        );
    }

    #[tokio::test]
    async fn another_nodes_ipv6_address_comes_off_its_eni_only_with_its_claim() {
        let take_off = |eni: &str, ips: &[&str]| json!({"NetworkInterfaceId": eni, "Ipv6Addresses": ips.iter().map(|a| json!({"Address": a})).collect::<Vec<_>>()});
        // The claim of the address names this node: it follows its pod.
        assert_eq!(
            verdict("UnassignIpv6Addresses", take_off("eni-b", &["fd00::7"])).await,
            Ok(())
        );
        // Claimed by the other node, by nobody, or one of several not ours.
        for ips in [&["fd00::8"][..], &["fd00::9"], &["fd00::7", "fd00::8"], &[]] {
            assert!(
                verdict("UnassignIpv6Addresses", take_off("eni-b", ips))
                    .await
                    .is_err(),
                "{ips:?}"
            );
        }
        // Its own ENI's, whatever the claims say.
        assert_eq!(
            verdict("UnassignIpv6Addresses", take_off("eni-a", &["fd00::8"])).await,
            Ok(())
        );
    }
}
