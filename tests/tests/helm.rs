//! The Helm chart (`deploy/helm/vpc-cni`): `helm lint` passes, and with
//! every value at its default `helm template` renders exactly the objects
//! of `deploy/` (the Namespace aside, which is made before the chart), so a
//! user gets the same vpc-cni either way; values change what they name and
//! nothing else.
//!
//! helm is built from its Go module by `scripts/k8s-bins.sh` (the suite
//! runs it first); a missing helm fails these tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use vpc_cni_tests::{k8s_tool, repo_root};

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/vpc-cni")
}

/// `helm template` with these extra arguments: its stdout, or its stderr
/// as the error.
fn template(namespace: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(k8s_tool("helm"))
        .args(["template", "vpc-cni"])
        .arg(chart())
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .expect("run helm template");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

type Objects = BTreeMap<(String, String), Value>;

/// The objects of a multi-document YAML by (kind, name).
fn objects(yaml: &str, what: &str) -> Objects {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("{what}: {e}"));
    docs.into_iter()
        .filter(|d| d.is_object())
        .map(|d| {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ((kind, name), d)
        })
        .collect()
}

fn rendered(args: &[&str]) -> Objects {
    let yaml = template("vpc-cni-system", args).unwrap_or_else(|e| panic!("helm template: {e}"));
    objects(&yaml, "helm template")
}

/// What `kubectl apply -f deploy/` creates, the Namespace aside.
fn manifests() -> Objects {
    let mut all = Objects::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy"))
        .expect("deploy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        all.extend(objects(&text, &file.display().to_string()));
    }
    all.remove(&("Namespace".into(), "vpc-cni-system".into()));
    all
}

/// Takes out what the chart adds on purpose: the pods' checksum of the
/// ConfigMap (a changed value rolls them) and the CRDs' keep policy.
fn without_chart_additions(mut objects: Objects) -> Objects {
    for ((kind, _), object) in &mut objects {
        let annotations = if kind == "CustomResourceDefinition" {
            object["metadata"].as_object_mut()
        } else {
            object
                .pointer_mut("/spec/template/metadata")
                .and_then(Value::as_object_mut)
        };
        if let Some(meta) = annotations
            && let Some(Value::Object(a)) = meta.get_mut("annotations")
        {
            a.remove("checksum/config");
            a.remove("helm.sh/resource-policy");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    objects
}

#[test]
fn the_chart_lints_clean() {
    let out = Command::new(k8s_tool("helm"))
        .args(["lint", "--strict", "--namespace", "vpc-cni-system"])
        .arg(chart())
        .output()
        .expect("run helm lint");
    assert!(
        out.status.success(),
        "helm lint --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chart_with_its_defaults_renders_what_deploy_holds() {
    let chart = without_chart_additions(rendered(&[]));
    let plain = manifests();
    let only_chart: Vec<_> = chart.keys().filter(|k| !plain.contains_key(*k)).collect();
    let only_plain: Vec<_> = plain.keys().filter(|k| !chart.contains_key(*k)).collect();
    assert!(
        only_chart.is_empty() && only_plain.is_empty(),
        "objects only in the chart: {only_chart:?}; only in deploy/: {only_plain:?}"
    );
    for (key, object) in &plain {
        assert!(
            &chart[key] == object,
            "{key:?} differs:\ndeploy/: {}\nchart:   {}",
            serde_json::to_string_pretty(object).unwrap_or_default(),
            serde_json::to_string_pretty(&chart[key]).unwrap_or_default()
        );
    }
}

#[test]
fn values_change_what_they_name() {
    let default = rendered(&[]);
    let set = rendered(&[
        "--set",
        "image.repository=registry.example/vpc-cni,image.tag=v9.9.9",
        "--set-string",
        "config.warm-ip-target=7,config.kubernetes-service-host=10.0.0.2",
        "--set-string",
        "agent.updateStrategy.rollingUpdate.maxUnavailable=10%",
        "--set",
        "cluster.replicas=3,crds.keep=false",
        "--set",
        "metrics.agentAddress=0.0.0.0:9187,metrics.clusterAddress=0.0.0.0:9188",
    ]);
    let ds = &set[&("DaemonSet".into(), "vpc-cni-agent".into())];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        "registry.example/vpc-cni:v9.9.9"
    );
    assert_eq!(
        spec["initContainers"][0]["image"],
        "registry.example/vpc-cni:v9.9.9"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    let has_arg =
        |args: &Value, arg: &str| args.as_array().is_some_and(|a| a.iter().any(|x| x == arg));
    assert!(has_arg(
        &spec["containers"][0]["args"],
        "--metrics-address=0.0.0.0:9187"
    ));
    let config = &set[&("ConfigMap".into(), "vpc-cni-config".into())]["data"];
    assert_eq!(config["warm-ip-target"], "7");
    assert_eq!(config["kubernetes-service-host"], "10.0.0.2");
    assert_eq!(config["ip-cooldown"], "30s", "the other values stay");
    let cluster = &set[&("Deployment".into(), "vpc-cni-cluster".into())];
    assert_eq!(cluster["spec"]["replicas"], 3);
    assert!(has_arg(
        &cluster["spec"]["template"]["spec"]["containers"][0]["args"],
        "--metrics-address=0.0.0.0:9188"
    ));
    assert_eq!(
        cluster["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/vpc-cni:v9.9.9"
    );
    // A changed value rolls both components.
    let checksum = |o: &Objects, kind: &str, name: &str| {
        o[&(kind.to_string(), name.to_string())]["spec"]["template"]["metadata"]["annotations"]
            ["checksum/config"]
            .clone()
    };
    for (kind, name) in [
        ("DaemonSet", "vpc-cni-agent"),
        ("Deployment", "vpc-cni-cluster"),
    ] {
        assert_ne!(checksum(&default, kind, name), checksum(&set, kind, name));
        assert!(checksum(&default, kind, name).is_string());
    }
    // CRDs: kept on uninstall by default, not with crds.keep=false, and
    // left out with crds.install=false.
    let crd = (
        "CustomResourceDefinition".to_string(),
        "vpcipclaims.vpc-cni.io".to_string(),
    );
    assert_eq!(
        default[&crd]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(set[&crd]["metadata"]["annotations"].is_null());
    let without = rendered(&["--set", "crds.install=false"]);
    assert!(
        !without
            .keys()
            .any(|(kind, _)| kind == "CustomResourceDefinition")
    );
    assert_eq!(without.len() + 3, default.len());
}

#[test]
fn another_namespace_is_refused_with_the_reason() {
    let err = template("kube-system", &[]).expect_err("kube-system is refused");
    assert!(
        err.contains("vpc-cni installs into the namespace vpc-cni-system only"),
        "{err}"
    );
}
