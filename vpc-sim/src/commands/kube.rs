//! `up --kubernetes`: where the Kubernetes binaries come from, and the
//! cluster started on a simulation that is up.

use std::path::{Path, PathBuf};
use std::process::Command;

use vpc_sim::k8s::{self, K8S_VERSION, NodeSpec, Options};
use vpc_sim::world::SharedWorld;

use super::demo::say;
use super::sibling_binary;
use super::up::{Sim, world_file};

/// The build script, from this crate's source tree.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-bins.sh")
}

/// The cache `scripts/k8s-bins.sh` builds into.
fn cache() -> PathBuf {
    std::env::var_os("VPC_CNI_K8S_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/vpc-cni/k8s")
        })
        .join(K8S_VERSION)
}

/// The binary and image directories: `explicit` if given, else the cache,
/// filled by `scripts/k8s-bins.sh` first when anything is missing (the
/// first build takes many minutes and says so).
pub fn binaries(explicit: Option<&Path>) -> Result<(PathBuf, PathBuf), String> {
    if let Some(dir) = explicit {
        let images = dir.parent().unwrap_or(dir).join("images");
        return Ok((dir.to_path_buf(), images));
    }
    let (bin, images) = (cache().join("bin"), cache().join("images"));
    let complete = k8s::BINARIES.iter().all(|b| bin.join(b).is_file())
        && ["pause.tar", "busybox.tar"]
            .iter()
            .all(|i| images.join(i).is_file());
    if complete {
        return Ok((bin, images));
    }
    let script = script();
    if !script.is_file() {
        return Err(format!(
            "the Kubernetes binaries are not in {} and {} is not there to build them; pass --k8s-bin-dir",
            bin.display(),
            script.display()
        ));
    }
    say(&format!(
        "==> building Kubernetes {K8S_VERSION} with {} (the first build takes 20 to 40 minutes on 2 cores)",
        script.display()
    ));
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!(
            "building the Kubernetes binaries failed ({}; its message is above)",
            script.display()
        ));
    }
    Ok((bin, images))
}

/// Starts the cluster on the simulation `sim` in `dir`.
pub fn start(dir: &Path, sim: &Sim, bin_dir: Option<&Path>) -> Result<(), String> {
    let (bin_dir, images_dir) = binaries(bin_dir)?;
    let world = SharedWorld::at(&world_file(dir))
        .read()
        .map_err(|e| e.to_string())?;
    let nodes: Vec<NodeSpec> = sim
        .nodes
        .iter()
        .map(|n| NodeSpec {
            name: n.instance.clone(),
            netns: n.netns.clone(),
            conflist: n.conflist.clone(),
            zone: world
                .vpc
                .instances
                .get(&n.instance)
                .map(|i| i.zone.clone())
                .unwrap_or_default(),
        })
        .collect();
    let opts = Options {
        bin_dir,
        images_dir,
        cni_bin: sibling_binary("vpc-cni"),
        loopback_bin: PathBuf::from("/usr/lib/cni/loopback"),
    };
    if let Err(e) = k8s::up(dir, &sim.tag, &nodes, &opts, &say) {
        // `up` removes the state directory on failure: keep the logs.
        let kept = std::env::temp_dir().join(format!("vpc-sim-{}-logs", sim.tag));
        let logs: Vec<_> = std::fs::read_dir(k8s::cluster_dir(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|x| x == "log"))
            .collect();
        if logs.is_empty() {
            return Err(e);
        }
        let _ = std::fs::create_dir_all(&kept);
        for entry in logs {
            let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
        }
        return Err(format!(
            "{e}\n(the cluster's logs are kept in {})",
            kept.display()
        ));
    }
    let env = std::fs::read_to_string(dir.join("env")).unwrap_or_default();
    std::fs::write(
        dir.join("env"),
        format!(
            "{env}KUBECONFIG={}\nKUBECTL={}\n",
            k8s::kubeconfig(dir).display(),
            opts.bin_dir.join("kubectl").display()
        ),
    )
    .map_err(|e| e.to_string())
}
