//! What booting machines with systemd-nspawn needs of the host, for `machines.rs`: loop device
//! nodes for guests that attach a `.raw` (recorded and restored around every boot), and a
//! machine's own cgroups (with `--keep-unit` nspawn puts the guest under its own cgroup, and two
//! guests sharing one would manage each other's units).
//! In: the host's `/dev/loop*` and cgroup hierarchies. Out: loop nodes recorded and put back;
//! a machine's cgroup directories, made and removed.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{on_path, stdout_of};

/// The host's loop device nodes: bound into guests that attach a `.raw`, recorded before a
/// boot and recreated (same numbers, same mode) after it, because a guest's systemd removes
/// the nodes of loop devices it sees go away, and those nodes are the host's.
#[derive(Debug, Clone, Default)]
pub struct LoopNodes(pub Vec<(PathBuf, u64, u32)>);

impl LoopNodes {
    /// Makes `/dev/loop-control` and the nodes of the next `count` free loop devices when
    /// missing (a container without udev has the devices but not their nodes), then records
    /// every loop node. Fails with the reason when this host has no loop devices to give.
    pub fn prepare(count: u32) -> Result<LoopNodes> {
        if !on_path("losetup") {
            bail!("the portable form attaches .raw images through loop devices: losetup is missing (apt-get install mount)");
        }
        mknod("/dev/loop-control", "c", 10, 237)?;
        let free = stdout_of(Command::new("losetup").arg("-f")).context("this host has no free loop device")?;
        let n: u32 = free
            .trim()
            .strip_prefix("/dev/loop")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("losetup -f printed {free:?}, not /dev/loopN"))?;
        for k in n..n + count {
            mknod(&format!("/dev/loop{k}"), "b", 7, k)?;
        }
        Ok(LoopNodes::record())
    }

    pub fn record() -> LoopNodes {
        let mut nodes = Vec::new();
        let Ok(rd) = fs::read_dir("/dev") else { return LoopNodes(nodes) };
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_loop = name == "loop-control" || name.strip_prefix("loop").is_some_and(|n| n.parse::<u32>().is_ok());
            if let (true, Ok(meta)) = (is_loop, fs::symlink_metadata(&path)) {
                if meta.file_type().is_block_device() || meta.file_type().is_char_device() {
                    nodes.push((path, meta.rdev(), meta.mode()));
                }
            }
        }
        nodes.sort();
        LoopNodes(nodes)
    }

    /// `--bind=` arguments for every recorded node.
    pub fn bind_args(&self) -> Vec<String> {
        self.0.iter().map(|(p, _, _)| format!("--bind={}", p.display())).collect()
    }

    /// Recreates every recorded node that is gone.
    pub fn restore(&self) {
        for (path, rdev, mode) in &self.0 {
            if path.exists() {
                continue;
            }
            let kind = if mode & 0o170000 == 0o060000 { "b" } else { "c" };
            let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
            let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
            let _ = Command::new("mknod")
                .args(["-m", &format!("{:o}", mode & 0o7777)])
                .arg(path)
                .args([kind, &major.to_string(), &minor.to_string()])
                .status();
        }
    }
}

fn mknod(path: &str, kind: &str, major: u32, minor: u32) -> Result<()> {
    if Path::new(path).exists() {
        return Ok(());
    }
    stdout_of(Command::new("mknod").args(["-m", "0660", path, kind, &major.to_string(), &minor.to_string()]))
        .with_context(|| format!("{path} is missing and cannot be created"))?;
    Ok(())
}

/// A machine's cgroups: a directory of its own in systemd's named v1 hierarchy (on a hybrid
/// host) and in the unified one, mounted beside the machine when the host has not mounted it.
#[derive(Default)]
pub struct Cgroups {
    pub dirs: Vec<PathBuf>,
    mounted: Option<PathBuf>,
}

impl Cgroups {
    pub fn create(machine_dir: &Path, id: &str) -> Result<Cgroups> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
        let mut roots = Vec::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            let point = pre.split_whitespace().nth(4).unwrap_or_default();
            let mut post = post.split_whitespace();
            let (fstype, options) = (post.next().unwrap_or_default(), post.nth(1).unwrap_or_default());
            if fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd") {
                roots.push(PathBuf::from(point));
            } else if fstype == "cgroup2" && unified.is_none() {
                unified = Some(PathBuf::from(point));
            }
        }
        let mut cg = Cgroups::default();
        let has_unified =
            fs::read_to_string("/proc/self/cgroup").unwrap_or_default().lines().any(|l| l.starts_with("0::"));
        match unified {
            Some(u) => roots.push(u),
            None if has_unified => {
                let point = machine_dir.join("cgroup2");
                fs::create_dir_all(&point)?;
                stdout_of(Command::new("mount").args(["-t", "cgroup2", "none"]).arg(&point))
                    .context("cannot mount the unified cgroup hierarchy for the machine")?;
                cg.mounted = Some(point.clone());
                roots.push(point);
            }
            None => {}
        }
        if roots.is_empty() {
            bail!("no cgroup hierarchy of systemd's on this host: systemd-nspawn cannot boot a machine here");
        }
        for root in roots {
            let dir = root.join(format!("xtask-machine-{id}"));
            if !dir.exists() {
                fs::create_dir(&dir).with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
            }
            cg.dirs.push(dir);
        }
        Ok(cg)
    }

    /// `sh -c` script that moves itself into the cgroups, then runs its arguments.
    pub fn join_script(&self) -> String {
        let mut s = String::new();
        for d in &self.dirs {
            s += &format!("echo $$ > '{}/cgroup.procs' && ", d.display());
        }
        s + "exec \"$@\""
    }

    /// Removes what a boot left below the machine's own cgroups (empty once it is off).
    pub fn clear(&self) {
        for d in &self.dirs {
            if let Ok(rd) = fs::read_dir(d) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    remove_cgroup(&e.path());
                }
            }
        }
    }

    pub fn remove(&mut self) {
        for d in std::mem::take(&mut self.dirs) {
            remove_cgroup(&d);
        }
        if let Some(point) = self.mounted.take() {
            if let Err(e) = stdout_of(Command::new("umount").arg(&point)) {
                eprintln!("machines: cannot unmount {}: {e:#}", point.display());
            }
        }
    }
}

/// rmdir of a cgroup and its children, deepest first (their files are not removable, nor need be).
fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            remove_cgroup(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
