//! `vpc-cni-agent install-cni`: put the plugin binary, the reference
//! `portmap` plugin the conflist chains after it (`hostPort`s), and the
//! conflist in place on the node (the DaemonSet's init container runs it
//! with the node's `/opt/cni/bin` and `/etc/cni/net.d` mounted).
//!
//! Each file is written whole into a temporary file in the target
//! directory, synced, and renamed over the target, so the runtime (which
//! watches the conf directory and runs whatever is in the bin directory)
//! never sees a half-written file, and a plugin binary that is running at
//! that moment keeps its old inode instead of failing with `ETXTBSY`. A
//! file that already has the same content is left alone, so running it
//! again changes nothing (and does not wake the runtime's watcher).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Args;

/// Where the image keeps the conflist it installs.
pub const DEFAULT_CONFLIST: &str = "/etc/vpc-cni/10-vpc-cni.conflist";

/// Where the image keeps the reference `portmap` plugin: Debian's own path
/// for it (`containernetworking-plugins`), so run by hand on such a node
/// `install-cni` finds it there too.
pub const DEFAULT_PORTMAP: &str = "/usr/lib/cni/portmap";

/// The `type` of the chained plugin that maps `hostPort`s.
const PORTMAP: &str = "portmap";

/// Flags of `install-cni`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The node's CNI binary directory.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The node's CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The plugin binary to install (default: `vpc-cni` next to this program).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// The `portmap` plugin to install beside it, when the conflist chains it.
    #[arg(long, default_value = DEFAULT_PORTMAP)]
    portmap: PathBuf,
    /// The conflist to install (kept under its own file name).
    #[arg(long, default_value = DEFAULT_CONFLIST)]
    conflist: PathBuf,
}

/// What happened to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written (it was missing or different).
    Installed,
    /// Already there with the same content.
    Unchanged,
}

/// Installs the plugin and, if the conflist chains it, `portmap`, then the
/// conflist (last, so a runtime that sees the configuration finds every
/// plugin it names). Everything is read and checked before anything is
/// written.
pub fn run(args: InstallArgs) -> Result<(), String> {
    let plugin = match args.plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program: {e}"))?
            .with_file_name("vpc-cni"),
    };
    let conflist = fs::read(&args.conflist)
        .map_err(|e| format!("cannot read {}: {e}", args.conflist.display()))?;
    let chained =
        chained_plugins(&conflist).map_err(|e| format!("{}: {e}", args.conflist.display()))?;
    let mut binaries = vec![(
        "vpc-cni",
        fs::read(&plugin).map_err(|e| format!("cannot read {}: {e}", plugin.display()))?,
    )];
    if chained.iter().any(|t| t == PORTMAP) {
        let portmap = fs::read(&args.portmap).map_err(|e| {
            format!(
                "cannot read {}: {e}; the conflist chains portmap, so the image must carry it (or pass --portmap)",
                args.portmap.display()
            )
        })?;
        binaries.push((PORTMAP, portmap));
    }
    let conf_name = args
        .conflist
        .file_name()
        .ok_or_else(|| format!("{} has no file name", args.conflist.display()))?;
    let steps = binaries
        .iter()
        .map(|(name, content)| (args.bin_dir.join(name), content, 0o755))
        .chain([(args.conf_dir.join(conf_name), &conflist, 0o644)]);
    for (target, content, mode) in steps {
        let outcome = install_file(&target, content, mode)
            .map_err(|e| format!("cannot install {}: {e}", target.display()))?;
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}: {}",
            target.display(),
            match outcome {
                Outcome::Installed => "installed",
                Outcome::Unchanged => "unchanged",
            }
        );
    }
    Ok(())
}

/// The `type`s of a conflist's plugins, in chain order. It must be a JSON
/// object with a non-empty `plugins` list whose every entry names its
/// `type`: a broken one would take the node's network down.
fn chained_plugins(bytes: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let plugins = match v.get("plugins") {
        Some(serde_json::Value::Array(p)) if !p.is_empty() => p,
        _ => return Err("not a conflist (no \"plugins\" list)".into()),
    };
    plugins
        .iter()
        .enumerate()
        .map(|(i, p)| match p.get("type") {
            Some(serde_json::Value::String(t)) if !t.is_empty() => Ok(t.clone()),
            _ => Err(format!("plugin {i} of the conflist has no \"type\"")),
        })
        .collect()
}

/// Writes `content` to `target` atomically with `mode`, unless it already
/// holds exactly that (and that mode).
pub fn install_file(target: &Path, content: &[u8], mode: u32) -> std::io::Result<Outcome> {
    if let Ok(meta) = fs::metadata(target)
        && meta.is_file()
        && meta.permissions().mode() & 0o7777 == mode
        && fs::read(target).is_ok_and(|old| old == content)
    {
        return Ok(Outcome::Unchanged);
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot name the runtime ignores (libcni reads *.conf, *.conflist and
    // *.json only), unique to this process.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(content)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| Outcome::Installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"vpc-cni","plugins":[{"type":"vpc-cni"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    fn setup() -> (tempfile::TempDir, InstallArgs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("vpc-cni"), b"plugin v1").expect("write");
        fs::write(src.join("portmap"), b"portmap v1").expect("write");
        fs::write(src.join("10-vpc-cni.conflist"), CONFLIST).expect("write");
        let args = InstallArgs {
            bin_dir: dir.path().join("opt/cni/bin"),
            conf_dir: dir.path().join("etc/cni/net.d"),
            plugin: Some(src.join("vpc-cni")),
            portmap: src.join("portmap"),
            conflist: src.join("10-vpc-cni.conflist"),
        };
        (dir, args)
    }

    fn again(a: &InstallArgs) -> InstallArgs {
        InstallArgs {
            bin_dir: a.bin_dir.clone(),
            conf_dir: a.conf_dir.clone(),
            plugin: a.plugin.clone(),
            portmap: a.portmap.clone(),
            conflist: a.conflist.clone(),
        }
    }

    #[test]
    fn installs_plugin_portmap_and_conflist_into_missing_directories() {
        let (_dir, args) = setup();
        let (bin, conf) = (args.bin_dir.clone(), args.conf_dir.clone());
        run(args).expect("install");
        assert_eq!(fs::read(bin.join("vpc-cni")).expect("plugin"), b"plugin v1");
        assert_eq!(
            fs::read(bin.join("portmap")).expect("portmap"),
            b"portmap v1"
        );
        for name in ["vpc-cni", "portmap"] {
            let mode = fs::metadata(bin.join(name))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755, "{name}");
        }
        assert_eq!(
            fs::read_to_string(conf.join("10-vpc-cni.conflist")).expect("conf"),
            CONFLIST
        );
        // No temporary file is left behind.
        assert_eq!(files(&bin), ["portmap", "vpc-cni"]);
        assert_eq!(files(&conf), ["10-vpc-cni.conflist"]);
    }

    #[test]
    fn an_existing_file_is_replaced_by_rename_not_rewritten_in_place() {
        let (_dir, args) = setup();
        let bin = args.bin_dir.clone();
        let plugin = args.plugin.clone().expect("plugin");
        run(again(&args)).expect("first install");
        let target = bin.join("vpc-cni");
        // A reader holding the old file (a running plugin) keeps it whole.
        let old = fs::File::open(&target).expect("open old");
        let old_ino = std::os::unix::fs::MetadataExt::ino(&old.metadata().expect("meta"));
        fs::write(&plugin, b"plugin v2, longer than v1").expect("new plugin");
        run(args).expect("second install");
        assert_eq!(
            fs::read(&target).expect("read"),
            b"plugin v2, longer than v1"
        );
        let new_ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&target).expect("meta"));
        assert_ne!(old_ino, new_ino, "the file was rewritten in place");
        let mut kept = String::new();
        std::io::Read::read_to_string(&mut &old, &mut kept).expect("read old");
        assert_eq!(kept, "plugin v1");
        assert_eq!(files(&bin), ["portmap", "vpc-cni"]);
    }

    #[test]
    fn running_twice_changes_nothing() {
        let (_dir, args) = setup();
        let conf = args.conf_dir.join("10-vpc-cni.conflist");
        let portmap = args.bin_dir.join("portmap");
        run(again(&args)).expect("first");
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).expect("meta"));
        let before = (ino(&conf), ino(&portmap));
        assert_eq!(
            install_file(&conf, CONFLIST.as_bytes(), 0o644).expect("again"),
            Outcome::Unchanged
        );
        run(args).expect("second");
        assert_eq!(
            (ino(&conf), ino(&portmap)),
            before,
            "an unchanged file was replaced (the runtime would reload)"
        );
    }

    #[test]
    fn a_changed_mode_alone_is_installed_again() {
        let (dir, _args) = setup();
        let target = dir.path().join("f");
        install_file(&target, b"x", 0o644).expect("first");
        assert_eq!(
            install_file(&target, b"x", 0o755).expect("mode"),
            Outcome::Installed
        );
        let mode = fs::metadata(&target).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn a_broken_conflist_is_refused_and_nothing_is_installed() {
        let (_dir, args) = setup();
        fs::write(&args.conflist, b"{\"name\": \"half").expect("write");
        let bin = args.bin_dir.clone();
        let err = run(args).expect_err("refused");
        assert!(err.contains("not JSON"), "{err}");
        assert!(!bin.exists(), "the plugin was installed before the check");
        assert!(chained_plugins(br#"{"name":"x"}"#).is_err());
        assert!(chained_plugins(br#"{"plugins":[{"type":"vpc-cni"},{}]}"#).is_err());
        assert_eq!(
            chained_plugins(CONFLIST.as_bytes()).expect("valid"),
            ["vpc-cni", "portmap"]
        );
    }

    #[test]
    fn a_missing_portmap_is_a_clear_error_and_nothing_is_installed() {
        let (_dir, args) = setup();
        fs::remove_file(&args.portmap).expect("rm");
        let bin = args.bin_dir.clone();
        let err = run(args).expect_err("refused");
        assert!(
            err.contains("portmap") && err.contains("the conflist chains portmap"),
            "{err}"
        );
        assert!(!bin.exists(), "the plugin was installed without portmap");
    }

    #[test]
    fn a_conflist_without_portmap_needs_none() {
        let (_dir, args) = setup();
        fs::write(
            &args.conflist,
            r#"{"cniVersion":"1.0.0","name":"vpc-cni","plugins":[{"type":"vpc-cni"}]}"#,
        )
        .expect("write");
        fs::remove_file(&args.portmap).expect("rm");
        let bin = args.bin_dir.clone();
        run(args).expect("install");
        assert_eq!(files(&bin), ["vpc-cni"]);
    }

    #[test]
    fn the_shipped_conflist_chains_portmap_after_vpc_cni_on_the_default_socket() {
        let shipped = include_str!("../../../conf/10-vpc-cni.conflist");
        assert_eq!(
            chained_plugins(shipped.as_bytes()).expect("valid"),
            ["vpc-cni", PORTMAP]
        );
        let v: serde_json::Value = serde_json::from_str(shipped).expect("json");
        assert_eq!(
            v["plugins"][0]["agentSocket"],
            proto::cni::config::DEFAULT_AGENT_SOCKET
        );
        assert_eq!(
            v["plugins"][1]["capabilities"],
            serde_json::json!({"portMappings": true}),
            "the runtime hands portmap the pod's hostPorts only for this capability"
        );
    }
}
