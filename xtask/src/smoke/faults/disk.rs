//! A member's data disk made small, and filled from outside etcd. In: a directory (and the
//! owner etcd runs as). Out: a tmpfs of a given size mounted there; a file written beside etcd's
//! data until the disk is full, to be removed to free it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::stdout_of;

/// Mounts a tmpfs of `bytes` at `dir` (created if needed), mode 0700, owned by `uid:gid`. One a
/// killed run left mounted there goes first.
pub fn mount_small(dir: &Path, bytes: u64, uid: u32, gid: u32) -> Result<()> {
    // A killed run may have left it mounted (an error here: it was not).
    let _ = Command::new("umount").arg(dir).output();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let opts = format!("size={bytes},mode=0700,uid={uid},gid={gid}");
    stdout_of(Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(dir))?;
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
