//! What the cluster makes on the host and `down` must undo even after a
//! crash: cgroups (one tree per cluster, under this process's own cgroup),
//! processes (every one of them lives in that tree), mounts under the
//! state directory, and the pod namespaces the runtimes bind-mount in
//! `/var/run/netns`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where cgroup hierarchies are mounted.
pub const CGROUP_FS: &str = "/sys/fs/cgroup";

/// The mounted hierarchies: every directory of `/sys/fs/cgroup` with a
/// `cgroup.procs`.
pub fn hierarchies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(CGROUP_FS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    out.sort();
    out
}

/// The cgroup path of the cluster's tree: this process's memory cgroup (so
/// whoever tracks this process by its cgroup still sees the cluster), then
/// `vpcsim-<tag>`. The same path serves in every hierarchy, as the
/// kubelet's `cgroupRoot` needs.
pub fn cgroup_base(tag: &str) -> String {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let parent = own
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .next()
        .unwrap_or_else(|| "/".into());
    format!("{}/vpcsim-{tag}", parent.trim_end_matches('/'))
}

/// Creates `path` (a cgroup path such as `/a/b`) in every hierarchy,
/// parents included; returns the directories it created, parents first.
/// cpuset children get their parent's CPUs and memory nodes, or no task
/// could join them.
pub fn create_cgroup(path: &str) -> Result<Vec<PathBuf>, String> {
    let mut made = Vec::new();
    for h in hierarchies() {
        let mut dir = h.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let parent = dir.clone();
            dir.push(part);
            if dir.exists() {
                continue;
            }
            if let Err(e) = fs::create_dir(&dir) {
                // cgroup2's root may refuse (no delegation); v1 must work.
                if h.ends_with("unified") {
                    break;
                }
                return Err(format!("cannot create cgroup {}: {e}", dir.display()));
            }
            made.push(dir.clone());
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(parent.join(file)) {
                    let _ = fs::write(dir.join(file), v.trim());
                }
            }
        }
    }
    Ok(made)
}

/// Moves `pid` into the cgroup `path` of every hierarchy that has it.
pub fn join_cgroup(path: &str, pid: u32) -> Result<(), String> {
    for h in hierarchies() {
        let procs = h.join(path.trim_start_matches('/')).join("cgroup.procs");
        if !procs.exists() {
            continue;
        }
        if let Err(e) = fs::write(&procs, pid.to_string())
            && !h.ends_with("unified")
        {
            return Err(format!("cannot move {pid} into {}: {e}", procs.display()));
        }
    }
    Ok(())
}

/// Every directory of the tree `path` in every hierarchy, deepest first.
fn tree(path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for h in hierarchies() {
        let root = h.join(path.trim_start_matches('/'));
        if root.is_dir() {
            walk(&root, &mut dirs);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&e.path(), out);
        }
    }
}

/// The pids in the tree `path`, in any hierarchy.
pub fn pids_in(path: &str) -> BTreeSet<u32> {
    tree(path)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The network namespaces (by inode) the processes of the tree `path`
/// are in: what tells the pods' namespaces apart from everyone else's.
pub fn netns_inodes(path: &str) -> BTreeSet<u64> {
    pids_in(path)
        .into_iter()
        .filter_map(|pid| fs::metadata(format!("/proc/{pid}/ns/net")).ok())
        .map(|m| m.ino())
        .collect()
}

/// Kills every process of the tree `path` (again and again: a dying
/// runtime may still fork) and removes its cgroups, deepest first, and
/// the `extra` directories (parents the cluster made) once empty.
pub fn destroy_cgroups(path: &str, extra: &[PathBuf]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pids = pids_in(path);
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return vec![format!(
                "processes {pids:?} in cgroup {path} survived SIGKILL for 15 s"
            )];
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut problems = Vec::new();
    for dir in tree(path) {
        // A cgroup just emptied can be busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    problems.push(format!("cgroup {} left in place: {e}", dir.display()));
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    // Parents the cluster made go when empty; another cluster of this
    // process's cgroup may still use them.
    let mut parents: Vec<PathBuf> = extra.to_vec();
    parents.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in parents {
        let _ = fs::remove_dir(&dir);
    }
    problems
}

/// Unmounts everything mounted at or under `dir`, deepest first (lazily:
/// a mount a dead process held is gone from the tree at once).
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for _ in 0..3 {
        let mut points = mounts_under(dir);
        if points.is_empty() {
            return problems;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &points {
            let _ = Command::new("umount").arg("-l").arg(p).output();
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        problems.push(format!("mounts left under {}: {left:?}", dir.display()));
    }
    problems
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the runtimes' namespaces (`cni-…`) in `/var/run/netns` whose inode is one of
/// `inodes` (the pods' namespaces a runtime made and can no longer remove).
pub fn remove_pod_netns(inodes: &BTreeSet<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    for e in fs::read_dir(crate::fabric::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("cni-") {
            continue;
        }
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !inodes.contains(&meta.ino()) {
            continue;
        }
        let _ = Command::new("umount").arg("-l").arg(&path).output();
        if let Err(e) = fs::remove_file(&path) {
            problems.push(format!("{}: {e}", path.display()));
        }
    }
    problems
}

/// The last `n` lines of a log, for an error message.
pub fn tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
