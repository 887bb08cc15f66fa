//! `up --kubernetes`: where the Kubernetes binaries come from, the
//! cluster started on a simulation whose fabric is up, then vpc-cni
//! installed on it as a user installs it: the credentials Secret, the
//! ConfigMap's values edited, `kubectl apply -f deploy/`, and the DaemonSet
//! ready on every node.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::wire::{Request, Response};
use vpc_sim::k8s::{self, K8S_VERSION, Kubectl, NodeSpec, Options};
use vpc_sim::world::SharedWorld;

use super::demo::say;
use super::sibling_binary;
use super::up::{Installer, Sim, UpArgs, world_file};

/// vpc-cni's namespace in `deploy/`.
pub const NAMESPACE: &str = "vpc-cni-system";
/// The DaemonSet in `deploy/`.
pub const DAEMONSET: &str = "vpc-cni-agent";
/// The label of the agent's pods.
pub const AGENT_LABEL: &str = "app.kubernetes.io/name=vpc-cni-agent";

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

/// The repository's manifests (`VPC_CNI_DEPLOY_DIR` overrides).
pub fn deploy_dir() -> PathBuf {
    std::env::var_os("VPC_CNI_DEPLOY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"))
}

/// The vpc-cni image archive for the binaries in `bin_dir`
/// (`bin_dir/vpc-cni-image.tar`), made by `scripts/vpc-cni-image.sh` when
/// missing or older than the binaries, Debian's `portmap` or the conflist.
pub fn vpc_cni_image(bin_dir: &Path) -> Result<PathBuf, String> {
    let out = bin_dir.join("vpc-cni-image.tar");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/vpc-cni-image.sh");
    let inputs = [
        bin_dir.join("vpc-cni-agent"),
        bin_dir.join("vpc-cni"),
        PathBuf::from("/usr/lib/cni/portmap"),
        root.join("conf/10-vpc-cni.conflist"),
    ];
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = modified(&out).is_some_and(|built| {
        inputs
            .iter()
            .all(|i| modified(i).is_some_and(|input| input <= built))
    });
    if fresh {
        return Ok(out);
    }
    if !script.is_file() {
        return Err(format!(
            "{} is missing or stale and {} is not there to make it; pass --image",
            out.display(),
            script.display()
        ));
    }
    let output = Command::new("bash")
        .arg(&script)
        .arg(bin_dir)
        .arg(&out)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "making the vpc-cni image failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(out)
}

/// The ConfigMap of `deploy/02-config.yaml` with `values` set, as a user
/// edits it: each key's line (or its commented-out line) replaced.
pub fn edit_config(text: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut found = vec![false; values.len()];
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let bare = line.trim_start().trim_start_matches('#').trim_start();
        let hit = values
            .iter()
            .position(|(k, _)| bare.strip_prefix(k).is_some_and(|r| r.starts_with(':')));
        match hit {
            Some(i) if line.starts_with("  ") => {
                let (key, value) = &values[i];
                out.push_str(&format!("  {key}: {}\n", serde_json::json!(value)));
                found[i] = true;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let missing: Vec<&str> = values
        .iter()
        .zip(&found)
        .filter(|(_, f)| !**f)
        .map(|((k, _), _)| *k)
        .collect();
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!("no key {} in the ConfigMap", missing.join(", ")))
    }
}

/// Starts the cluster on the simulation `sim` in `dir`, then its emulator
/// on the management network, then installs vpc-cni from `deploy/`.
pub fn start(dir: &Path, sim: &mut Sim, args: &UpArgs) -> Result<(), String> {
    let (bin_dir, images_dir) = binaries(args.k8s_bin_dir.as_deref())?;
    let image = match &args.image {
        Some(image) => image.clone(),
        None => {
            let agent = args
                .agent_bin
                .clone()
                .unwrap_or_else(|| sibling_binary("vpc-cni-agent"));
            let agent_dir = fs::canonicalize(&agent)
                .map_err(|e| format!("{}: {e}", agent.display()))?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            say(&format!(
                "==> image localhost/vpc-cni:dev from {}",
                agent_dir.display()
            ));
            vpc_cni_image(&agent_dir)?
        }
    };
    let world = SharedWorld::at(&world_file(dir))
        .read()
        .map_err(|e| e.to_string())?;
    let nodes: Vec<NodeSpec> = sim
        .nodes
        .iter()
        .map(|n| {
            let instance = world.vpc.instances.get(&n.instance);
            NodeSpec {
                name: n.instance.clone(),
                netns: n.netns.clone(),
                zone: instance.map(|i| i.zone.clone()).unwrap_or_default(),
                instance_type: instance.map(|i| i.type_name()).unwrap_or_default(),
                ipv6: n.ipv6.clone(),
            }
        })
        .collect();
    let mut extra_images = vec![image, images_dir.join("coredns.tar")];
    extra_images.extend(args.extra_images.iter().cloned());
    if args.e2e_images {
        extra_images.push(images_dir.join("agnhost.tar"));
    }
    let opts = Options {
        bin_dir,
        images_dir,
        extra_images,
        loopback_bin: PathBuf::from("/usr/lib/cni/loopback"),
        proxy_mode: args.proxy_mode,
        cluster_cidr: world.vpc.cidr.to_string(),
        cluster_cidr6: match args.ip_family {
            super::up::IpFamily::Dual => world.vpc.ipv6_block.map(|b| b.to_string()),
            super::up::IpFamily::Ipv4 => None,
        },
        router_netns: world
            .fabric
            .as_ref()
            .map(|f| f.router.clone())
            .ok_or("the simulation has no fabric")?,
        api_types: vec![deploy_dir().join("05-crds.yaml")],
    };
    let installed = k8s::up(dir, &sim.tag, &nodes, &opts, &say)
        .and_then(|cluster| install(dir, sim, &cluster, &opts, args));
    if let Err(e) = installed {
        // `up` removes the state directory on failure: keep the logs.
        let kept = std::env::temp_dir().join(format!("vpc-sim-{}-logs", sim.tag));
        let logs: Vec<_> = fs::read_dir(k8s::cluster_dir(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|x| x == "log"))
            .collect();
        if logs.is_empty() {
            return Err(e);
        }
        let _ = fs::create_dir_all(&kept);
        for entry in logs {
            let _ = fs::copy(entry.path(), kept.join(entry.file_name()));
        }
        return Err(format!(
            "{e}\n(the cluster's logs are kept in {})",
            kept.display()
        ));
    }
    let env = fs::read_to_string(dir.join("env")).unwrap_or_default();
    fs::write(
        dir.join("env"),
        format!(
            "{env}KUBECONFIG={}\nKUBECTL={}\nVPC_CNI_NAMESPACE={NAMESPACE}\n",
            k8s::kubeconfig(dir).display(),
            opts.bin_dir.join("kubectl").display()
        ),
    )
    .map_err(|e| e.to_string())
}

/// The emulator on the management network (metadata answered by the
/// caller's address), then vpc-cni as a user installs it.
fn install(
    dir: &Path,
    sim: &mut Sim,
    cluster: &k8s::Cluster,
    opts: &Options,
    args: &UpArgs,
) -> Result<(), String> {
    let api_limits = args.api_limits.as_str();
    let host_ip = cluster
        .host_ip
        .clone()
        .ok_or("the cluster has no management address")?;
    let clients: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.ip.clone(), n.name.clone()))
        .collect();
    say(&format!(
        "==> the VPC API and metadata emulator on {host_ip} (the nodes' network)"
    ));
    let wrapper = cluster
        .control_plane_netns
        .as_deref()
        .map(k8s::control_plane::wrapper)
        .unwrap_or_default();
    let address = super::up::start_emulator(
        dir,
        sim,
        &format!("{host_ip}:0"),
        &clients,
        api_limits,
        // The nodes' role reads only: the cloud gateway holds the one key
        // that writes (the Secret below), and a node's own credentials
        // change nothing.
        "read-only",
        &wrapper,
    )?;
    for (i, node) in sim.nodes.iter_mut().enumerate() {
        node.socket = k8s::node_private_dir(dir, i + 1, "/run/vpc-cni").join("agent.sock");
    }
    super::up::save_sim(dir, sim)?;
    for node in &sim.nodes {
        if let Some(parent) = node.conflist.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        super::up::write_conflist(node)?;
    }
    super::up::write_env(dir, sim)?;

    let kubectl = Kubectl::new(&opts.bin_dir, dir);
    let deploy = deploy_dir();
    let started = Instant::now();
    let how = match args.install {
        Installer::Manifests => "kubectl apply -f deploy/",
        Installer::Helm => "helm install deploy/helm/vpc-cni",
    };
    say(&format!(
        "==> installing vpc-cni from {}: namespace, the cloud gateway's Secret, ConfigMap values, \
         {how} (the nodes' own CAM role reads only)",
        deploy.display()
    ));
    kubectl.run(&[
        "apply",
        "-f",
        &deploy.join("00-namespace.yaml").to_string_lossy(),
    ])?;
    // The one key that writes, for the cluster component only (the
    // DaemonSet names no Secret).
    kubectl.run(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "vpc-cni-credentials",
        &format!(
            "--from-env-file={}",
            super::up::credentials_file(dir).display()
        ),
    ])?;
    // The values of this cluster, as a user would set them.
    let endpoint = format!("http://{address}");
    let mut values = vec![
        ("cloud-endpoint", endpoint.clone()),
        ("metadata-url", endpoint),
        ("cluster-name", format!("vpcsim-{}", sim.tag)),
        ("kubernetes-service-host", host_ip.clone()),
        ("kubernetes-service-port", k8s::APISERVER_PORT.to_string()),
    ];
    // Set only for dual stack: an earlier release's ConfigMap (the upgrade
    // test installs one) has no such key, and without it agents serve IPv4.
    if args.ip_family == super::up::IpFamily::Dual {
        values.push(("ip-family", "dual".to_string()));
    }
    match args.install {
        Installer::Manifests => apply_manifests(dir, &kubectl, &deploy, &values)?,
        Installer::Helm => helm_install(dir, &opts.bin_dir, &kubectl, &deploy, &values)?,
    }

    say("==> waiting for the DaemonSet to be ready on every node");
    let n = sim.nodes.len() as u64;
    let ds_ready = k8s::wait_for(dir, DAEMONSET, Duration::from_secs(180), || {
        kubectl
            .json(&["-n", NAMESPACE, "get", "daemonset", DAEMONSET])
            .is_ok_and(|ds| {
                let status = &ds["status"];
                status["desiredNumberScheduled"] == n
                    && status["updatedNumberScheduled"] == n
                    && status["numberReady"] == n
            })
    });
    if let Err(e) = ds_ready {
        return Err(format!("{e}\n{}", agent_diagnostics(&kubectl)));
    }
    let names: Vec<String> = sim.nodes.iter().map(|n| n.instance.clone()).collect();
    k8s::wait_nodes_ready(dir, &kubectl, &names, Duration::from_secs(60))?;
    for node in &sim.nodes {
        let answered = k8s::wait_for(
            dir,
            &format!("the agent of {}", node.instance),
            Duration::from_secs(30),
            || {
                // Ready, or not for a reason of the VPC's (a node past the
                // ENI quota is installed all the same).
                matches!(
                    proto::client::call(&node.socket, &Request::Status, Duration::from_secs(2)),
                    Ok(Ok(Response::Status(s)))
                        if s.ready || s.reason.as_deref().is_some_and(|r| r.contains("ENILimit"))
                )
            },
        );
        if let Err(e) = answered {
            return Err(format!("{e}\n{}", agent_diagnostics(&kubectl)));
        }
    }
    say(&format!(
        "==> vpc-cni ready on {} nodes {:.1} s after {how}",
        sim.nodes.len(),
        started.elapsed().as_secs_f64()
    ));
    install_dns(dir, &kubectl)
}

/// `kubectl apply -f` of a copy of `deploy/` whose ConfigMap carries
/// `values` (the copy a user would edit).
fn apply_manifests(
    dir: &Path,
    kubectl: &Kubectl,
    deploy: &Path,
    values: &[(&str, String)],
) -> Result<(), String> {
    let edited = k8s::cluster_dir(dir).join("deploy");
    fs::create_dir_all(&edited).map_err(|e| e.to_string())?;
    for entry in fs::read_dir(deploy).map_err(|e| format!("{}: {e}", deploy.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|x| x == "yaml") {
            fs::copy(&path, edited.join(path.file_name().expect("file name")))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let config = edited.join("02-config.yaml");
    let text = fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let text = edit_config(&text, values).map_err(|e| format!("{}: {e}", config.display()))?;
    fs::write(&config, text).map_err(|e| e.to_string())?;
    kubectl.run(&["apply", "-f", &edited.to_string_lossy()])?;
    Ok(())
}

/// `helm install vpc-cni deploy/helm/vpc-cni` into the namespace made
/// before, with a values file holding `values` under `config`; helm's own
/// state (cache, config) stays in the simulation's directory.
fn helm_install(
    dir: &Path,
    bin_dir: &Path,
    kubectl: &Kubectl,
    deploy: &Path,
    values: &[(&str, String)],
) -> Result<(), String> {
    let helm = bin_dir.join("helm");
    if !helm.is_file() {
        return Err(format!(
            "{} is missing: build it with `K8S_BINS=helm bash scripts/k8s-bins.sh`",
            helm.display()
        ));
    }
    // The CRDs were applied before kube-controller-manager started (see
    // `Options::api_types`): marked as the release's, Helm adopts them
    // instead of refusing to install over them.
    let crds = [
        "crd/vpcipclaims.vpc-cni.io",
        "crd/vpcips.vpc-cni.io",
        "crd/nodeeniconfigs.vpc-cni.io",
    ];
    let mut label = vec!["label", "--overwrite"];
    label.extend(crds);
    label.push("app.kubernetes.io/managed-by=Helm");
    kubectl.run(&label)?;
    let release_namespace = format!("meta.helm.sh/release-namespace={NAMESPACE}");
    let mut annotate = vec!["annotate", "--overwrite"];
    annotate.extend(crds);
    annotate.extend(["meta.helm.sh/release-name=vpc-cni", &release_namespace]);
    kubectl.run(&annotate)?;
    let home = k8s::cluster_dir(dir).join("helm");
    fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let file = home.join("values.yaml");
    fs::write(&file, helm_values(values)).map_err(|e| format!("{}: {e}", file.display()))?;
    let out = Command::new(&helm)
        .args(["install", "vpc-cni"])
        .arg(deploy.join("helm/vpc-cni"))
        .args(["--namespace", NAMESPACE, "--kubeconfig"])
        .arg(&kubectl.kubeconfig)
        .arg("--values")
        .arg(&file)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", helm.display()))?;
    if !out.status.success() {
        return Err(format!(
            "helm install: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A values file setting these ConfigMap keys (`config:` of the chart).
fn helm_values(values: &[(&str, String)]) -> String {
    let mut out = String::from("config:\n");
    for (key, value) in values {
        out.push_str(&format!("  {key}: {}\n", serde_json::json!(value)));
    }
    out
}

/// CoreDNS behind `kube-dns`, once pods can get addresses; returns when
/// it answers (a ready replica, the Service with an endpoint).
fn install_dns(dir: &Path, kubectl: &Kubectl) -> Result<(), String> {
    let started = Instant::now();
    say(&format!(
        "==> cluster DNS: CoreDNS {} behind kube-dns ({})",
        k8s::dns::COREDNS_VERSION,
        k8s::dns::DNS_SERVICE_IP
    ));
    kubectl.run_with_input(&["apply", "-f", "-"], Some(&k8s::dns::manifest()))?;
    let ready = k8s::wait_for(dir, "CoreDNS", Duration::from_secs(120), || {
        kubectl
            .json(&["-n", "kube-system", "get", "deployment", "coredns"])
            .is_ok_and(|d| d["status"]["readyReplicas"].as_u64().unwrap_or(0) >= 1)
    });
    if let Err(e) = ready {
        let pods = kubectl
            .run(&["-n", "kube-system", "get", "pods", "-o", "wide"])
            .unwrap_or_else(|e| e);
        let logs = kubectl
            .run(&[
                "-n",
                "kube-system",
                "logs",
                "-l",
                "k8s-app=kube-dns",
                "--tail=10",
                "--prefix",
            ])
            .unwrap_or_else(|e| e);
        return Err(format!(
            "{e}
{pods}
{logs}"
        ));
    }
    say(&format!(
        "    CoreDNS ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The agents' pods and their last log lines, for an error message.
fn agent_diagnostics(kubectl: &Kubectl) -> String {
    let pods = kubectl
        .run(&["-n", NAMESPACE, "get", "pods", "-o", "wide"])
        .unwrap_or_else(|e| e);
    let logs = kubectl
        .run(&[
            "-n",
            NAMESPACE,
            "logs",
            "-l",
            AGENT_LABEL,
            "--all-containers",
            "--tail=10",
            "--prefix",
        ])
        .unwrap_or_else(|e| e);
    let events = kubectl
        .run(&["-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"])
        .unwrap_or_else(|e| e);
    format!("{pods}\n{logs}\n{events}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configmap_takes_every_value_the_simulation_sets() {
        let text = include_str!("../../../deploy/02-config.yaml");
        let edited = edit_config(
            text,
            &[
                ("cloud-endpoint", "http://100.64.1.1:4000".into()),
                ("metadata-url", "http://100.64.1.1:4000".into()),
                ("kubernetes-service-host", "100.64.1.1".into()),
                ("kubernetes-service-port", "6443".into()),
            ],
        )
        .expect("edit");
        assert!(edited.contains("  cloud-endpoint: \"http://100.64.1.1:4000\"\n"));
        assert!(edited.contains("  metadata-url: \"http://100.64.1.1:4000\"\n"));
        // The commented-out keys are switched on.
        assert!(edited.contains("\n  kubernetes-service-host: \"100.64.1.1\"\n"));
        assert!(edited.contains("\n  kubernetes-service-port: \"6443\"\n"));
        assert!(!edited.contains("vpc.tencentcloudapi.com\""));
        // Other keys and comments stay.
        assert!(edited.contains("  warm-ip-target: \"4\"\n"));
        assert!(edited.contains("# The Tencent Cloud VPC API."));
        assert!(
            edit_config(text, &[("no-such-key", "x".into())])
                .expect_err("unknown key")
                .contains("no-such-key")
        );
    }
}
