//! Outputs that are never half-written: a file is written to a temp sibling and renamed
//! ([`write_atomic`]), a directory is staged beside its destination and renamed ([`StagingDir`],
//! [`replace_dir`]), and a set of files is made durable and visible together ([`AtomicBatch`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A temporary path next to `dest` (same filesystem, so `rename` is atomic), unique per process.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `data` with `mode` to a new temp sibling of `dest` (parents created), open for a sync;
/// on an error the temp file is removed.
fn write_temp(dest: &Path, data: &[u8], mode: u32) -> Result<(PathBuf, fs::File)> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = temp_sibling(dest);
    let written = (|| -> Result<fs::File> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set mode of {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(f)
    })();
    match written {
        Ok(f) => Ok((tmp, f)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `data` to `dest` atomically with the given mode: temp file, fsync, rename.
pub fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    let (tmp, f) = write_temp(dest, data, mode)?;
    let result = (|| -> Result<()> {
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, dest).with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Files written atomically as a set: each goes to a temp sibling at once; [`commit`] then
/// flushes the filesystem once (`syncfs`), renames everything in the order it was written, and
/// flushes once more so that the renames last too. Dropped uncommitted, it removes its temp
/// files and staged directories and leaves every destination as it was.
///
/// Two flushes instead of one fsync per file: the PKI writes 30-odd small files, and their
/// fsyncs, which the disk serialises even when they are issued in parallel, were most of its time.
///
/// [`commit`]: AtomicBatch::commit
#[derive(Default)]
pub struct AtomicBatch {
    /// What commit moves into place, in order.
    pending: Vec<Pending>,
}

enum Pending {
    /// A temp file (kept open for the flush) and its destination.
    File { tmp: PathBuf, dest: PathBuf, file: fs::File },
    /// A staged directory and the directory it replaces.
    Dir { staged: StagingDir, dest: PathBuf },
}

impl AtomicBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `data` with `mode` to a temp sibling of `dest`; `dest` itself changes at [`commit`].
    ///
    /// [`commit`]: AtomicBatch::commit
    pub fn write(&mut self, dest: &Path, data: &[u8], mode: u32) -> Result<()> {
        if self.pending.iter().any(|p| matches!(p, Pending::File { dest: d, .. } if d == dest)) {
            bail!("{} is written twice in one batch", dest.display());
        }
        let (tmp, file) = write_temp(dest, data, mode)?;
        self.pending.push(Pending::File { tmp, dest: dest.to_path_buf(), file });
        Ok(())
    }

    /// Replaces directory `dest` by `staged` at [`commit`], after the writes before this call
    /// (which may be files inside `staged`).
    ///
    /// [`commit`]: AtomicBatch::commit
    pub fn replace_dir(&mut self, staged: StagingDir, dest: &Path) {
        self.pending.push(Pending::Dir { staged, dest: dest.to_path_buf() });
    }

    /// Makes every write durable and visible: flush, move into place in order, flush.
    /// On an error, what was not moved yet is removed (see Drop).
    pub fn commit(mut self) -> Result<()> {
        // One open handle per filesystem the batch touches: what syncfs flushes.
        let mut filesystems: Vec<(u64, fs::File)> = Vec::new();
        for p in &self.pending {
            let handle = match p {
                Pending::File { file, .. } => file.try_clone().context("cannot duplicate a file handle")?,
                Pending::Dir { staged, .. } => {
                    fs::File::open(staged.path()).with_context(|| format!("cannot open {}", staged.path().display()))?
                }
            };
            let dev = device_of(&handle)?;
            if !filesystems.iter().any(|(d, _)| *d == dev) {
                filesystems.push((dev, handle));
            }
        }
        sync_filesystems(&filesystems)?;
        while !self.pending.is_empty() {
            match self.pending.remove(0) {
                Pending::File { tmp, dest, file } => {
                    drop(file);
                    if let Err(e) = fs::rename(&tmp, &dest) {
                        let _ = fs::remove_file(&tmp);
                        return Err(e).with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()));
                    }
                }
                Pending::Dir { staged, dest } => staged.commit(&dest)?,
            }
        }
        sync_filesystems(&filesystems)
    }
}

fn device_of(file: &fs::File) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata().context("cannot stat an open file")?.dev())
}

/// Flushes the filesystem of each handle (one per filesystem) to its disk.
fn sync_filesystems(files: &[(u64, fs::File)]) -> Result<()> {
    use std::os::fd::AsRawFd;
    for (_, f) in files {
        // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error()).context("cannot flush the filesystem to disk (syncfs)");
        }
    }
    Ok(())
}

impl Drop for AtomicBatch {
    fn drop(&mut self) {
        for p in &self.pending {
            if let Pending::File { tmp, .. } = p {
                let _ = fs::remove_file(tmp);
            }
        }
        // Staged directories remove themselves.
    }
}

/// Replaces directory `dest` by the completed directory `staged` (both on one filesystem).
/// The old content is moved aside first and removed only after the new one is in place.
pub fn replace_dir(staged: &Path, dest: &Path) -> Result<()> {
    let old = dest.with_file_name(format!(
        ".{}.old-{}",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let had_old = dest.exists();
    if had_old {
        fs::rename(dest, &old).with_context(|| format!("cannot move {} aside", dest.display()))?;
    }
    if let Err(err) = fs::rename(staged, dest) {
        if had_old {
            let _ = fs::rename(&old, dest);
        }
        return Err(err).with_context(|| format!("cannot move {} to {}", staged.display(), dest.display()));
    }
    if had_old {
        fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// A directory removed when dropped unless `keep` is called: the staging area of an
/// output that must never be left half-written.
pub struct StagingDir {
    path: PathBuf,
    armed: bool,
}

impl StagingDir {
    /// Creates a fresh staging directory beside `dest`.
    pub fn beside(dest: &Path) -> Result<Self> {
        let path = temp_sibling(dest);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("cannot clear {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(StagingDir { path, armed: true })
    }

    /// Like [`StagingDir::beside`], for content that holds keys: `dest`'s parent is created if
    /// missing and the staging directory is 0700, so nobody but its owner looks in.
    pub fn private_beside(dest: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let staged = StagingDir::beside(dest)?;
        fs::set_permissions(&staged.path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", staged.path.display()))?;
        Ok(staged)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the staged content to `dest`, replacing what was there.
    pub fn commit(mut self, dest: &Path) -> Result<()> {
        replace_dir(&self.path, dest)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b.txt");
        write_atomic(&dest, b"hi", 0o600).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hi");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn atomic_batch_changes_nothing_until_commit_and_nothing_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("sub/b.crt"));
        fs::write(&a, "old").unwrap();
        let mut batch = AtomicBatch::new();
        batch.write(&a, b"new a", 0o600).unwrap();
        batch.write(&b, b"new b", 0o644).unwrap();
        assert!(batch.write(&a, b"again", 0o600).unwrap_err().to_string().contains("written twice"));
        // Not yet visible.
        assert_eq!(fs::read_to_string(&a).unwrap(), "old");
        assert!(!b.exists());
        batch.commit().unwrap();
        assert_eq!(fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(fs::read_to_string(&b).unwrap(), "new b");
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&b).unwrap().permissions().mode() & 0o777, 0o644);

        // A staged directory replaces its destination after the files written into it.
        let ca = dir.path().join("ca");
        fs::create_dir(&ca).unwrap();
        fs::write(ca.join("ca.key"), "old key").unwrap();
        let staged = StagingDir::beside(&ca).unwrap();
        let mut batch = AtomicBatch::new();
        batch.write(&staged.path().join("ca.key"), b"new key", 0o600).unwrap();
        batch.replace_dir(staged, &ca);
        assert_eq!(fs::read_to_string(ca.join("ca.key")).unwrap(), "old key");
        batch.commit().unwrap();
        assert_eq!(fs::read_to_string(ca.join("ca.key")).unwrap(), "new key");
        fs::remove_dir_all(&ca).unwrap();

        // Dropped: the old content stays and no temp file is left.
        let mut batch = AtomicBatch::new();
        batch.write(&a, b"lost", 0o600).unwrap();
        let staged = StagingDir::beside(&dir.path().join("gone")).unwrap();
        batch.replace_dir(staged, &dir.path().join("gone"));
        drop(batch);
        assert_eq!(fs::read_to_string(&a).unwrap(), "new a");
        let mut names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["a.key", "sub"]);
    }

    #[test]
    fn staging_dir_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let staged = StagingDir::beside(&dest).unwrap();
        let p = staged.path().to_path_buf();
        fs::write(p.join("x"), "1").unwrap();
        drop(staged);
        assert!(!p.exists());
        assert!(!dest.exists());

        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old"), "0").unwrap();
        let staged = StagingDir::beside(&dest).unwrap();
        fs::write(staged.path().join("new"), "1").unwrap();
        staged.commit(&dest).unwrap();
        assert!(dest.join("new").exists());
        assert!(!dest.join("old").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
