//! The floor, measured in the same run as the plugins: what starting a
//! process costs (`true`, and the plugin answering VERSION without the
//! agent), and what the kernel work of one ADD and one DEL costs alone: the
//! agent's own data path driven in-process, the same requests, no plugin,
//! no socket, no store.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use node_agent::dataplane::{Dataplane, NetlinkDataplane, PodNetns, PodSpec};
use node_agent::ipam::{AttachmentKey, EniRecord};

use crate::{ip, pct};

/// Medians and p99s in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Floor {
    /// Starting `true`.
    pub exec: (f64, f64),
    /// The plugin answering VERSION (its start, environment and output).
    pub plugin_start: (f64, f64),
    /// The kernel work of ADD.
    pub kernel_add: (f64, f64),
    /// The kernel work of DEL (the veth is left to the reaper, as the agent does).
    pub kernel_del: (f64, f64),
}

/// Measures the floor with `samples` of each.
pub fn measure(plugin: &Path, tag: &str, samples: usize) -> Result<Floor, String> {
    let true_bin = PathBuf::from("/bin/true");
    let exec = spawn_times(&true_bin, &[], samples)?;
    let plugin_start = spawn_times(plugin, &[("CNI_COMMAND", "VERSION")], samples)?;
    let (kernel_add, kernel_del) = kernel(tag, samples)?;
    Ok(Floor {
        exec: summary(&exec),
        plugin_start: summary(&plugin_start),
        kernel_add: summary(&kernel_add),
        kernel_del: summary(&kernel_del),
    })
}

fn summary(v: &[f64]) -> (f64, f64) {
    (pct(v, 50.0), pct(v, 99.0))
}

fn spawn_times(bin: &Path, env: &[(&str, &str)], n: usize) -> Result<Vec<f64>, String> {
    (0..n)
        .map(|_| {
            let started = Instant::now();
            let out = Command::new(bin)
                .env_clear()
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            let took = started.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                return Err(format!("{} failed", bin.display()));
            }
            Ok(took)
        })
        .collect()
}

/// A scratch node namespace with one ENI (a veth whose far end sits in a
/// "wire" namespace), and `n` pod namespaces; every namespace is removed
/// again, also on failure.
fn kernel(tag: &str, n: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let node = Scratch::new(format!("{tag}-fnode"))?;
    let wire = Scratch::new(format!("{tag}-fwire"))?;
    let mac = "02:aa:00:00:00:01";
    ip(&[
        "-n", &wire.0, "link", "add", "f1", "type", "veth", "peer", "name", "eth1", "address", mac,
        "netns", &node.0,
    ])?;
    ip(&["-n", &wire.0, "link", "set", "f1", "up"])?;
    let pods: Vec<Scratch> = (0..n)
        .map(|i| Scratch::new(format!("{tag}-fpod{i}")))
        .collect::<Result<_, _>>()?;
    let eni = EniRecord {
        id: "eni-floor".into(),
        mac: mac.into(),
        subnet_id: "subnet-floor".into(),
        gateway: Ipv4Addr::new(10, 254, 0, 1),
        primary_ip: Ipv4Addr::new(10, 254, 0, 2),
        mtu: 1500,
        table: 101,
        ips: Vec::new(),
        ipv6: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let node_path = PathBuf::from("/var/run/netns").join(&node.0);
        let dp = NetlinkDataplane::new(Some(&node_path))
            .await
            .map_err(|e| e.to_string())?;
        dp.program_eni(&eni).await.map_err(|e| e.to_string())?;
        let specs: Vec<PodSpec> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| PodSpec {
                key: AttachmentKey {
                    network: "floor".into(),
                    container_id: format!("floor{i:04}"),
                    ifname: "eth0".into(),
                },
                netns: PodNetns::at(&format!("/var/run/netns/{}", p.0)),
                ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 254, 1, 0)) + i as u32),
                ipv6: None,
                eni: eni.clone(),
            })
            .collect();
        let mut adds = Vec::new();
        for spec in &specs {
            let started = Instant::now();
            dp.attach_pod(spec).await.map_err(|e| e.to_string())?;
            adds.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let mut dels = Vec::new();
        for spec in &specs {
            let started = Instant::now();
            dp.detach_pod(spec).await.map_err(|e| e.to_string())?;
            dels.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok((adds, dels))
    })
}

/// A network namespace removed on drop.
struct Scratch(String);

impl Scratch {
    fn new(name: String) -> Result<Scratch, String> {
        ip(&["netns", "add", &name])?;
        Ok(Scratch(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}
