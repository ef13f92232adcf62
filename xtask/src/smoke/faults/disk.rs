//! A member's data disk of its own: small, filled from outside etcd, and slowed down. In: a
//! directory (and the owner etcd runs as). Out: an ext4 file system on a loop device mounted
//! there (a real block device, so that the kernel's block-I/O throttle applies to it); a file
//! written beside etcd's data until the disk is full, to be removed to free it; a write limit
//! on the device for the processes of one cgroup (the member's container).
//!
//! Why the cgroup's files and not `podman update --device-write-iops`: podman 4.3 with runc on a
//! cgroup v1 host accepted the limit and set nothing (`HostConfig.BlkioDeviceWriteIOps` stayed
//! null, the cgroup's `blkio.throttle.write_iops_device` empty). Written there directly, the
//! limit holds the bios etcd submits itself: its WAL's O_DSYNC writes and fdatasync's data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::stdout_of;

/// A loop device with an ext4 file system, mounted.
#[derive(Debug, Clone)]
pub struct LoopDisk {
    /// Where it is mounted.
    pub dir: PathBuf,
    /// The file behind the loop device (`<dir>.img`).
    pub image: PathBuf,
    /// The loop device, e.g. `/dev/loop3`.
    pub device: PathBuf,
    /// Its `major:minor`, as the cgroup files name a device.
    pub numbers: String,
}

/// Makes an ext4 file system of `bytes` on a loop device backed by `<dir>.img` and mounts it at
/// `dir` (created if needed), mode 0700, owned by `uid:gid`, no blocks reserved for root. What a
/// killed run left there goes first.
pub fn mount_loop(dir: &Path, bytes: u64, uid: u32, gid: u32) -> Result<LoopDisk> {
    let image = dir.with_extension("img");
    release(dir, &image);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = std::fs::File::create(&image).with_context(|| format!("cannot create {}", image.display()))?;
    file.set_len(bytes).with_context(|| format!("cannot size {}", image.display()))?;
    drop(file);
    let device = stdout_of(Command::new("losetup").args(["--find", "--show"]).arg(&image))
        .with_context(|| format!("cannot attach {} to a loop device (losetup, util-linux)", image.display()))?;
    let device = PathBuf::from(device.trim());
    let disk = (|| -> Result<LoopDisk> {
        let name = device.file_name().and_then(|n| n.to_str()).context("a loop device without a name")?;
        let numbers = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .with_context(|| format!("cannot read the device numbers of {}", device.display()))?
            .trim()
            .to_string();
        stdout_of(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&device))
            .context("cannot make the file system (mkfs.ext4, e2fsprogs)")?;
        stdout_of(Command::new("mount").arg(&device).arg(dir))?;
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to {uid}:{gid}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        Ok(LoopDisk { dir: dir.to_path_buf(), image: image.clone(), device: device.clone(), numbers })
    })();
    if disk.is_err() {
        release(dir, &image);
    }
    disk
}

/// Unmounts `dir` and detaches every loop device backed by `image`, then removes it; what is
/// not there is not an error (a cleanup, and the start of a run after a killed one).
pub fn release(dir: &Path, image: &Path) {
    let _ = Command::new("umount").arg(dir).output();
    if let Ok(out) = Command::new("losetup").arg("--associated").arg(image).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(dev) = line.split(':').next().filter(|d| d.starts_with("/dev/")) {
                let _ = Command::new("losetup").args(["--detach", dev]).output();
            }
        }
    }
    let _ = std::fs::remove_file(image);
}

/// Limits the writes that the processes of `pid`'s cgroup submit to the device `numbers`
/// (`major:minor`) to `iops` a second, or lifts the limit (`None`): cgroup v1's
/// `blkio.throttle.write_iops_device`, else v2's `io.max`. Read back to be sure it holds.
pub fn throttle_writes(pid: &str, numbers: &str, iops: Option<u32>) -> Result<()> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("cannot read the cgroups of process {pid}"))?;
    let path_of = |want: &dyn Fn(&str) -> bool| {
        cgroups.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            want(controllers).then(|| path.to_string())
        })
    };
    let (file, line, expect) = if let Some(path) = path_of(&|c| c.split(',').any(|c| c == "blkio")) {
        let file = PathBuf::from(format!("/sys/fs/cgroup/blkio{path}/blkio.throttle.write_iops_device"));
        let n = iops.unwrap_or(0);
        (file, format!("{numbers} {n}"), iops.map(|n| format!("{numbers} {n}")))
    } else if let Some(path) =
        path_of(&|c| c.is_empty()).filter(|_| Path::new("/sys/fs/cgroup/cgroup.controllers").exists())
    {
        let file = PathBuf::from(format!("/sys/fs/cgroup{path}/io.max"));
        let n = iops.map_or("max".to_string(), |n| n.to_string());
        (file, format!("{numbers} wiops={n}"), iops.map(|n| format!("wiops={n}")))
    } else {
        bail!("process {pid} is in no blkio (v1) or io (v2) cgroup: the kernel cannot throttle its writes");
    };
    std::fs::write(&file, &line).with_context(|| format!("cannot write {line:?} to {}", file.display()))?;
    let now = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let holds = match &expect {
        Some(want) => now.lines().any(|l| l.starts_with(numbers) && l.contains(want.as_str())),
        None => !now.lines().any(|l| l.starts_with(numbers) && !l.contains("wiops=max")),
    };
    if !holds {
        bail!("{} reads {:?} after writing {line:?}", file.display(), now.trim());
    }
    Ok(())
}

/// Writes `dir/filler` as this process's user (root) in 1 MiB chunks until ENOSPC; the file and
/// the bytes written.
pub fn fill(dir: &Path) -> Result<(PathBuf, u64)> {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).with_context(|| format!("cannot create {}", filler.display()))?;
    let chunk = vec![0u8; 1024 * 1024];
    let mut filled = 0u64;
    loop {
        match file.write_all(&chunk) {
            Ok(()) => filled += chunk.len() as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e).with_context(|| format!("cannot fill {}", filler.display())),
        }
    }
    Ok((filler, filled))
}
