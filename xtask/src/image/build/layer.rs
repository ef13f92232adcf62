//! One image layer, streamed: planned entries in, a gzip blob in `blobs/sha256/` out.
//!
//! The bytes flow `tar -> sha256 (diff_id) -> gzip -> sha256 (digest) -> temp file`, and the
//! temp file is renamed to its digest when complete. Nothing larger than a 64 KiB buffer is
//! held in memory, whatever the size of the binaries.
//!
//! Tar headers are built from the plan, never from host metadata (the framing, padding and end
//! blocks, is `tar::Builder`'s): ustar format,
//! numeric uid/gid only (no user or group names), mtime = SOURCE_DATE_EPOCH, directories
//! with a trailing `/`, entries in the order given (the planner sorts them and lists every
//! parent directory explicitly).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flate2::{Compression, GzBuilder};
use serde::Serialize;

use crate::image::spec::{check_mode_policy, EntryKind};
use crate::util::{HashingReader, HashingWriter, Sha256Hex};

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory: no content.
    None,
    /// Generated text (passwd, nsswitch.conf, ...).
    Inline(Vec<u8>),
    /// A file on the build host (verified binaries, runtime libraries); symlinks followed.
    Host(PathBuf),
}

/// One entry of a layer, fully resolved: the tar header is a function of this and the epoch.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Path inside the image, without leading or trailing `/`.
    pub path: String,
    #[serde(serialize_with = "ser_kind")]
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// SHA-256 of the content (files only).
    pub sha256: Option<Sha256Hex>,
    #[serde(skip)]
    pub source: Source,
}

fn ser_kind<S: serde::Serializer>(k: &EntryKind, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(match k {
        EntryKind::Dir => "dir",
        EntryKind::File => "file",
    })
}

impl Entry {
    pub fn dir(path: &str, mode: u32, uid: u32, gid: u32) -> Entry {
        Entry { path: path.into(), kind: EntryKind::Dir, mode, uid, gid, size: 0, sha256: None, source: Source::None }
    }

    pub fn inline(path: &str, mode: u32, uid: u32, gid: u32, data: Vec<u8>) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            uid,
            gid,
            size: data.len() as u64,
            sha256: Some(Sha256Hex::of_bytes(&data)),
            source: Source::Inline(data),
        }
    }

    /// A host file, hashed now; the layer writer re-checks the hash while it copies.
    pub fn host(path: &str, mode: u32, uid: u32, gid: u32, host_path: &Path) -> Result<Entry> {
        let sha = Sha256Hex::of_file(host_path)?;
        Entry::host_known(path, mode, uid, gid, host_path, sha)
    }

    /// A host file whose SHA-256 is already known (recorded by acquire, or a blob's name).
    /// Not re-read now: the layer writer checks the hash while it copies, and fails on a mismatch.
    pub fn host_known(path: &str, mode: u32, uid: u32, gid: u32, host_path: &Path, sha256: Sha256Hex) -> Result<Entry> {
        let meta = fs::metadata(host_path).with_context(|| format!("cannot stat {}", host_path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", host_path.display());
        }
        Ok(Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            uid,
            gid,
            size: meta.len(),
            sha256: Some(sha256),
            source: Source::Host(host_path.to_path_buf()),
        })
    }
}

/// The result of writing one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerBlob {
    /// SHA-256 of the gzip blob: its name in `blobs/sha256/`.
    pub digest: Sha256Hex,
    pub size: u64,
    /// SHA-256 of the uncompressed tar.
    pub diff_id: Sha256Hex,
    pub tar_size: u64,
}

/// Sets the ustar name, split into prefix and name for a long path, by `tar::Header::set_path`
/// (which keeps a directory's trailing `/` and refuses `..` and absolute paths).
fn set_name(h: &mut tar::Header, name: &str) -> Result<()> {
    h.set_path(name).with_context(|| {
        format!("path {name:?} cannot be a ustar name (at most 155 + 100 bytes split at a '/', relative, no '..')")
    })
}

/// The 512-byte tar header of `e`.
pub fn header(e: &Entry, epoch: u64) -> Result<tar::Header> {
    check_mode_policy(&format!("/{}", e.path), e.kind, e.mode)?;
    let mut h = tar::Header::new_ustar();
    match e.kind {
        EntryKind::Dir => {
            set_name(&mut h, &format!("{}/", e.path))?;
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        }
        EntryKind::File => {
            set_name(&mut h, &e.path)?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.size);
        }
    }
    h.set_mode(e.mode);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(epoch);
    h.set_device_major(0).context("tar device number")?;
    h.set_device_minor(0).context("tar device number")?;
    h.set_cksum();
    Ok(h)
}

/// Writes the tar stream of `entries` into `w`: our headers, the contents, and the framing
/// (padding, the two zero blocks that end an archive) by `tar::Builder`. Host files are
/// re-hashed while they are copied and must still match the plan.
pub fn write_tar<W: Write>(entries: &[Entry], epoch: u64, w: &mut W) -> Result<()> {
    let mut builder = tar::Builder::new(w);
    for e in entries {
        let h = header(e, epoch)?;
        match &e.source {
            Source::None => builder.append(&h, std::io::empty()),
            Source::Inline(data) => {
                if data.len() as u64 != e.size {
                    bail!("/{}: {} bytes inline, planned {}", e.path, data.len(), e.size);
                }
                builder.append(&h, data.as_slice())
            }
            Source::Host(path) => {
                let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                let mut reader = HashingReader::new(f.take(e.size));
                builder.append(&h, &mut reader).with_context(|| format!("cannot read {}", path.display()))?;
                let (taken, got, n) = reader.finish();
                let longer = taken.into_inner().read(&mut [0u8; 1]).map(|k| k > 0).unwrap_or(true);
                if n != e.size || longer || Some(got) != e.sha256 {
                    bail!(
                        "{} is not the file that was verified: its size or SHA-256 differs from the recorded one ({}); \
                         it changed after acquire or planning: fetch etcd again (delete the cached copy) and re-run",
                        path.display(),
                        e.sha256.map(|s| s.to_string()).unwrap_or_default()
                    );
                }
                Ok(())
            }
        }
        .with_context(|| format!("cannot write /{} into the tar stream", e.path))?;
    }
    builder.finish().context("cannot end the tar stream")?;
    Ok(())
}

/// Streams `entries` into a gzip layer blob under `blobs_dir` (the layout's `blobs/sha256`).
pub fn write_layer(entries: &[Entry], epoch: u64, gzip_level: u32, blobs_dir: &Path, tag: &str) -> Result<LayerBlob> {
    let tmp = blobs_dir.join(format!(".layer-{tag}.tmp"));
    let result = (|| -> Result<LayerBlob> {
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let blob = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
        // No file name, mtime 0, OS "unknown": the gzip header carries nothing of this host.
        let gz = GzBuilder::new().mtime(0).operating_system(255).write(blob, Compression::new(gzip_level));
        let mut tar = HashingWriter::new(gz);
        write_tar(entries, epoch, &mut tar)?;
        let (gz, diff_id, tar_size) = tar.finish();
        let blob = gz.finish().context("cannot finish the gzip stream")?;
        let (buffered, digest, size) = blob.finish();
        let file = buffered.into_inner().map_err(|e| e.into_error()).context("cannot flush the layer")?;
        file.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        let dest = blobs_dir.join(digest.to_string());
        fs::rename(&tmp, &dest).with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))?;
        Ok(LayerBlob { digest, size, diff_id, tar_size })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<Entry> {
        let bin = dir.join("bin");
        fs::write(&bin, vec![7u8; 1000]).unwrap();
        vec![
            Entry::dir("usr", 0o755, 0, 0),
            Entry::host("usr/etcd", 0o755, 0, 0, &bin).unwrap(),
            Entry::dir("tmp", 0o1777, 0, 0),
            Entry::inline("etc-passwd", 0o644, 0, 0, b"root:x:0:0::/root:/usr/sbin/nologin\n".to_vec()),
        ]
    }

    #[test]
    fn tar_is_deterministic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let es = entries(dir.path());
        let mut a = Vec::new();
        write_tar(&es, 1234, &mut a).unwrap();
        let mut b = Vec::new();
        write_tar(&es, 1234, &mut b).unwrap();
        assert_eq!(a, b);
        let mut ar = tar::Archive::new(&a[..]);
        let got: Vec<(String, u32, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    String::from_utf8(h.path_bytes().to_vec()).unwrap(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.size().unwrap(),
                )
            })
            .collect();
        assert_eq!(got[0], ("usr/".into(), 0o755, 1234, 0));
        assert_eq!(got[1], ("usr/etcd".into(), 0o755, 1234, 1000));
        assert_eq!(got[2], ("tmp/".into(), 0o1777, 1234, 0));
        assert_eq!(a.len() % 512, 0);
    }

    #[test]
    fn changed_host_file_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let es = entries(dir.path());
        fs::write(dir.path().join("bin"), vec![8u8; 1000]).unwrap();
        let err = write_tar(&es, 0, &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("is not the file that was verified"));
    }

    #[test]
    fn layer_blob_is_named_by_digest_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let es = entries(dir.path());
        let blobs = dir.path().join("blobs");
        fs::create_dir(&blobs).unwrap();
        let l1 = write_layer(&es, 0, 6, &blobs, "a").unwrap();
        let l2 = write_layer(&es, 0, 6, &blobs, "a").unwrap();
        assert_eq!(l1, l2);
        let names: Vec<_> = fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(l1.digest.to_string())]);
        assert_eq!(Sha256Hex::of_file(&blobs.join(l1.digest.to_string())).unwrap(), l1.digest);
        let mut raw = Vec::new();
        write_tar(&es, 0, &mut raw).unwrap();
        assert_eq!(Sha256Hex::of_bytes(&raw), l1.diff_id);
        // A long path splits into prefix and name.
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        let h = header(&Entry::dir(&long, 0o755, 0, 0), 0).unwrap();
        assert_eq!(String::from_utf8(h.path_bytes().to_vec()).unwrap(), format!("{long}/"));
        let ustar = h.as_ustar().unwrap();
        assert_eq!(&ustar.prefix[..121], format!("{}\0", "d".repeat(120)).as_bytes());
        // A name no split fits, and a path that climbs out, are refused with the path named.
        let err = header(&Entry::dir(&"x".repeat(200), 0o755, 0, 0), 0).unwrap_err();
        assert!(format!("{err:#}").contains("cannot be a ustar name"), "{err:#}");
        let err = header(&Entry::dir("usr/../../etc", 0o755, 0, 0), 0).unwrap_err();
        assert!(format!("{err:#}").contains("cannot be a ustar name"), "{err:#}");
    }

    /// The bytes of one layer for a fixed input, pinned: a dependency update that changes the tar
    /// framing or the gzip stream (flate2, its backend, the tar crate) changes every image digest
    /// and release sum, and must be noticed here, not shipped. If this fails after an update,
    /// decide knowingly: keep the old dependency, or bump `plan::FORMAT` and these pins.
    #[test]
    fn one_layer_digest_is_pinned() {
        const DIFF_ID: &str = "aef1a74e7591bfbb12312625d5c56649f181d178570661e23186432765c55d5c";
        const DIGEST: &str = "f21e3a3fe1df453e64555fdbddeafeec4f24800cba03e8dd3940d88dc371974e";
        const TAR_SIZE: u64 = 4608;
        const SIZE: u64 = 238;
        let dir = tempfile::tempdir().unwrap();
        let es = entries(dir.path());
        let blobs = dir.path().join("blobs");
        fs::create_dir(&blobs).unwrap();
        let l = write_layer(&es, 1_700_000_000, 1, &blobs, "pinned").unwrap();
        assert_eq!(
            (l.diff_id.to_string(), l.digest.to_string(), l.tar_size, l.size),
            (DIFF_ID.to_string(), DIGEST.to_string(), TAR_SIZE, SIZE),
            "the layer bytes changed"
        );
    }
}
