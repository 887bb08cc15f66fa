//! The node's `NodeEniConfig` status and its conditions as events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::Patch;
use kube::runtime::events::EventType;
use kube::{Api, Resource};

use super::{COUNTS_PERIOD, Publisher};
use crate::kube::crd::{NodeEniConfig, NodeEniConfigSpec, NodeEniConfigStatus};
use crate::kube::objects::Desired;
use crate::kube::writes::apply_params;

impl Publisher {
    /// Whether a status that differs from the one written goes out now:
    /// at once when more than its counts changed, else once
    /// [`COUNTS_PERIOD`] has passed since the last write.
    fn node_status_due(&self, want: &NodeEniConfigStatus) -> bool {
        let counts_only = self
            .sent_node
            .as_ref()
            .is_some_and(|sent| sent.without_counts() == want.without_counts());
        !counts_only
            || self
                .node_written
                .is_none_or(|at| at.elapsed() >= COUNTS_PERIOD)
    }

    pub(super) async fn publish_node(&mut self, want: &Desired) -> Result<(), kube::Error> {
        let node = self.options.node.clone();
        if self.node_uid.is_none() {
            let nodes: Api<Node> = Api::all(self.client.clone());
            self.node_uid = nodes.get_opt(&node).await?.and_then(|n| n.metadata.uid);
        }
        if self.sent_node.as_ref() != Some(&want.node) && self.node_status_due(&want.node) {
            let api: Api<NodeEniConfig> = Api::all(self.client.clone());
            if self.sent_node.is_none() {
                let obj = NodeEniConfig::new(&node, NodeEniConfigSpec::default());
                api.patch(&node, &apply_params(), &Patch::Apply(&obj))
                    .await?;
            }
            let status = serde_json::json!({
                "apiVersion": NodeEniConfig::api_version(&()),
                "kind": NodeEniConfig::kind(&()),
                "status": want.node,
            });
            api.patch_status(&node, &apply_params(), &Patch::Apply(&status))
                .await?;
            self.sent_node = Some(want.node.clone());
            self.node_written = Some(Instant::now());
        }
        let now: BTreeMap<String, String> = want
            .node
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.message.clone()))
            .collect();
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            uid: self.node_uid.clone(),
            ..Default::default()
        };
        for (kind, message) in &now {
            if !self.conditions.contains_key(kind) {
                self.event(
                    &reference,
                    EventType::Warning,
                    kind,
                    "AllocateEni",
                    message.clone(),
                )
                .await;
            }
        }
        let cleared: BTreeSet<String> = self
            .conditions
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for kind in cleared {
            let note = format!("{kind} no longer holds on node {node}");
            self.event(
                &reference,
                EventType::Normal,
                &format!("{kind}Cleared"),
                "AllocateEni",
                note,
            )
            .await;
        }
        self.conditions = now;
        Ok(())
    }
}
