//! `cargo xtask image verify PATH`: an independent check of an OCI image layout directory or
//! oci-archive `.tar`. In: the path. Out: a [`Report`] or an error listing every problem.
//!
//! One streaming pass over the blobs re-hashes each one (its name must be its SHA-256),
//! gunzips every gzip blob to compute its diff_id and reads its tar headers, and keeps only
//! small JSON blobs in memory. Then the references are walked from `index.json`: media types,
//! sizes, digests, `rootfs.diff_ids`, history and platforms must all agree, and every layer
//! must keep the hardening rules (no setuid/setgid, nothing world-writable but sticky
//! directories, no device nodes, no path escaping the root).
//!
//! It runs at the end of every build, on the staged layout, before anything is published.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::image::oci::{self, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use crate::image::spec::{check_mode_policy, EntryKind};
use crate::util::{HashingReader, Sha256Hex};

/// JSON blobs larger than this are not kept (an image's manifests and configs are a few KiB).
const MAX_JSON: u64 = 4 << 20;

/// What one pass over a blob found.
#[derive(Debug, Default)]
struct BlobFacts {
    size: u64,
    sha256: Option<Sha256Hex>,
    /// Decompressed SHA-256 and size, for gzip blobs.
    diff_id: Option<Sha256Hex>,
    /// Problems found in the layer's tar (policy violations, unreadable tar).
    tar_problems: Vec<String>,
    tar_entries: usize,
    /// The content, for small blobs that look like JSON.
    json: Option<Vec<u8>>,
    /// Whether the blob is a plain (uncompressed) tar.
    is_tar: bool,
}

/// One image found in the layout.
#[derive(Debug, Clone)]
pub struct ImageFound {
    pub ref_name: Option<String>,
    pub manifest: String,
    pub platform: String,
    pub layers: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub images: Vec<ImageFound>,
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs no descriptor references (not an error).
    pub unreferenced: Vec<String>,
}

/// Reads one blob completely from `r`, learning everything `check` needs.
fn scan_blob<R: Read>(r: R) -> Result<BlobFacts> {
    let mut facts = BlobFacts::default();
    let mut raw = BufReader::with_capacity(1 << 16, HashingReader::new(r));
    let head = raw.fill_buf().context("cannot read blob")?.to_vec();
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut plain = HashingReader::new(flate2::bufread::GzDecoder::new(&mut raw));
        scan_tar(&mut plain, &mut facts);
        // Whatever the tar reader left (or could not parse) still counts for the diff_id.
        if let Err(e) = io::copy(&mut plain, &mut io::sink()) {
            facts.tar_problems.push(format!("gzip stream is corrupt: {e}"));
        }
        facts.diff_id = Some(plain.finish().1);
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        facts.is_tar = true;
        scan_tar(&mut raw, &mut facts);
    } else if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let mut buf = Vec::new();
        (&mut raw).take(MAX_JSON + 1).read_to_end(&mut buf).context("cannot read blob")?;
        if buf.len() as u64 <= MAX_JSON {
            facts.json = Some(buf);
        }
    }
    io::copy(&mut raw, &mut io::sink()).context("cannot read blob")?;
    let (_, sha256, size) = raw.into_inner().finish();
    facts.size = size;
    facts.sha256 = Some(sha256);
    Ok(facts)
}

/// Reads tar headers from `r`, recording policy violations.
fn scan_tar<R: Read>(r: &mut R, facts: &mut BlobFacts) {
    let mut archive = tar::Archive::new(r);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            facts.tar_problems.push(format!("unreadable tar: {e}"));
            return;
        }
    };
    let mut seen = BTreeSet::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                facts.tar_problems.push(format!("unreadable tar entry: {e}"));
                return;
            }
        };
        facts.tar_entries += 1;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let h = entry.header();
        let clean = path.trim_start_matches("./").trim_end_matches('/').to_string();
        if path.starts_with('/') || clean.split('/').any(|c| c == "..") {
            facts.tar_problems.push(format!("{path}: escapes the image root"));
        }
        if !seen.insert(clean.clone()) {
            facts.tar_problems.push(format!("{path}: appears twice in the layer"));
        }
        let mode = h.mode().unwrap_or(0o7777);
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Some(EntryKind::Dir),
            tar::EntryType::Regular | tar::EntryType::Continuous => Some(EntryKind::File),
            tar::EntryType::Symlink | tar::EntryType::Link => None,
            other => {
                facts
                    .tar_problems
                    .push(format!("{path}: entry type {other:?} (device, fifo or unknown) is not allowed"));
                None
            }
        };
        if let Some(kind) = kind {
            if let Err(e) = check_mode_policy(&format!("/{clean}"), kind, mode) {
                facts.tar_problems.push(format!("{e:#}"));
            }
        }
    }
}

/// Scans the blob files of a layout on every core: biggest first, from a shared queue.
fn scan_dir_parallel(dir: &Path, names: Vec<std::ffi::OsString>) -> Result<BTreeMap<String, BlobFacts>> {
    let mut jobs: Vec<(u64, String)> = Vec::new();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        let size = fs::metadata(dir.join(&name)).map(|m| m.len()).unwrap_or(0);
        jobs.push((size, name));
    }
    jobs.sort();
    let queue = std::sync::Mutex::new(jobs);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let results: Vec<Result<Vec<(String, BlobFacts)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(String, BlobFacts)>> {
                    let mut done = Vec::new();
                    loop {
                        let job = queue.lock().map_err(|_| anyhow::anyhow!("a verify thread panicked"))?.pop();
                        let Some((_, name)) = job else { return Ok(done) };
                        let p = dir.join(&name);
                        let f = File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
                        let facts = scan_blob(f).with_context(|| format!("cannot read {}", p.display()))?;
                        done.push((name, facts));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a verify thread panicked"))))
            .collect()
    });
    let mut out = BTreeMap::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Facts per blob (by hex digest), and the top-level files (`oci-layout`, `index.json`).
type Collected = (BTreeMap<String, BlobFacts>, BTreeMap<String, Vec<u8>>);

/// Reads a layout directory or an oci-archive in one pass.
fn collect(path: &Path) -> Result<Collected> {
    let mut blobs = BTreeMap::new();
    let mut top = BTreeMap::new();
    let meta = fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if meta.is_dir() {
        for name in ["oci-layout", "index.json", "manifest.json"] {
            let p = path.join(name);
            if p.exists() {
                top.insert(name.to_string(), fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?);
            }
        }
        let dir = path.join("blobs/sha256");
        if dir.is_dir() {
            let mut names = Vec::new();
            for e in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
                names.push(e.with_context(|| format!("cannot list {}", dir.display()))?.file_name());
            }
            blobs = scan_dir_parallel(&dir, names)?;
        }
        for e in fs::read_dir(path.join("blobs")).into_iter().flatten().flatten() {
            if e.file_name() != "sha256" {
                bail!(
                    "{}: blobs/{} is not a sha256 directory; only sha256 digests are supported",
                    path.display(),
                    e.file_name().to_string_lossy()
                );
            }
        }
    } else {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 16, f));
        for entry in ar.entries().with_context(|| format!("{} is not a tar archive", path.display()))? {
            let mut entry = entry.with_context(|| format!("{}: unreadable tar entry", path.display()))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = name.trim_start_matches("./").to_string();
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                t => bail!("{}: {name} is a {t:?}; an oci-archive holds only files and directories", path.display()),
            }
            if name == "oci-layout" || name == "index.json" || name == "manifest.json" {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(MAX_JSON)
                    .read_to_end(&mut buf)
                    .with_context(|| format!("{}: cannot read {name}", path.display()))?;
                top.insert(name, buf);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                let facts = scan_blob(&mut entry).with_context(|| format!("{}: cannot read {name}", path.display()))?;
                if blobs.insert(hex.to_string(), facts).is_some() {
                    bail!("{}: {name} appears twice", path.display());
                }
            } else {
                bail!(
                    "{}: unexpected file {name:?} in an oci-archive (only oci-layout, index.json, manifest.json \
                     and blobs/sha256/*)",
                    path.display()
                );
            }
        }
    }
    Ok((blobs, top))
}

struct Checker<'a> {
    blobs: &'a BTreeMap<String, BlobFacts>,
    problems: Vec<String>,
    referenced: BTreeSet<String>,
    images: Vec<ImageFound>,
}

impl Checker<'_> {
    /// Checks that `desc` points at an existing blob of the stated size and digest.
    fn blob(&mut self, desc: &Descriptor, ctx: &str) -> Option<&BlobFacts> {
        let hex = match oci::sha256_of(desc.digest()) {
            Ok(d) => d.to_string(),
            Err(e) => {
                self.problems.push(format!("{ctx}: {e:#}"));
                return None;
            }
        };
        self.referenced.insert(hex.clone());
        let blobs = self.blobs;
        let Some(f) = blobs.get(&hex) else {
            self.problems.push(format!("{ctx}: blob {} is missing", desc.digest()));
            return None;
        };
        if f.sha256.map(|d| d.to_string()) != Some(hex.clone()) {
            self.problems.push(format!(
                "{ctx}: blob {} is corrupt: its content hashes to sha256:{}",
                desc.digest(),
                f.sha256.map(|d| d.to_string()).unwrap_or_default()
            ));
        }
        if f.size != desc.size() {
            self.problems.push(format!(
                "{ctx}: blob {} has {} bytes, the descriptor says {}",
                desc.digest(),
                f.size,
                desc.size()
            ));
        }
        Some(f)
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self, desc: &Descriptor, ctx: &str) -> Option<T> {
        let f = self.blob(desc, ctx)?;
        let Some(bytes) = f.json.as_ref() else {
            self.problems.push(format!("{ctx}: blob {} is not a JSON document", desc.digest()));
            return None;
        };
        match serde_json::from_slice(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("{ctx}: blob {} is not a valid {}: {e}", desc.digest(), desc.media_type()));
                None
            }
        }
    }

    fn descriptor(&mut self, desc: &Descriptor, ctx: &str, depth: usize) {
        if depth > 4 {
            self.problems.push(format!("{ctx}: indexes nested too deep"));
            return;
        }
        match desc.media_type() {
            MediaType::ImageIndex => {
                let Some(index) = self.json::<ImageIndex>(desc, ctx) else { return };
                if *index.media_type() != Some(MediaType::ImageIndex) || index.schema_version() != 2 {
                    self.problems.push(format!(
                        "{ctx}: index {} has mediaType {} / schemaVersion {}",
                        desc.digest(),
                        media_type_name(index.media_type()),
                        index.schema_version()
                    ));
                }
                for (i, d) in index.manifests().iter().enumerate() {
                    if d.platform().is_none() {
                        self.problems.push(format!("{ctx} -> manifests[{i}]: an image index entry needs a platform"));
                    }
                    self.descriptor(d, &format!("{ctx} -> manifests[{i}]"), depth + 1);
                }
            }
            MediaType::ImageManifest => self.manifest(desc, ctx),
            other => self
                .problems
                .push(format!("{ctx}: unknown media type \"{other}\" (expected an image manifest or index)")),
        }
    }

    fn manifest(&mut self, desc: &Descriptor, ctx: &str) {
        let Some(m) = self.json::<ImageManifest>(desc, ctx) else { return };
        let ctx = format!("{ctx} (manifest {})", desc.digest());
        if *m.media_type() != Some(MediaType::ImageManifest) || m.schema_version() != 2 {
            self.problems.push(format!(
                "{ctx}: mediaType {} / schemaVersion {}",
                media_type_name(m.media_type()),
                m.schema_version()
            ));
        }
        if *m.config().media_type() != MediaType::ImageConfig {
            self.problems.push(format!(
                "{ctx}: config has media type \"{}\", expected {}",
                m.config().media_type(),
                MediaType::ImageConfig
            ));
        }
        let Some(cfg) = self.json::<ImageConfiguration>(m.config(), &format!("{ctx} -> config")) else { return };
        let (rootfs, layers) = (cfg.rootfs(), m.layers());
        if rootfs.typ() != "layers" {
            self.problems.push(format!("{ctx}: rootfs.type is {:?}, expected \"layers\"", rootfs.typ()));
        }
        if rootfs.diff_ids().len() != layers.len() {
            self.problems.push(format!(
                "{ctx}: {} layers but {} rootfs.diff_ids",
                layers.len(),
                rootfs.diff_ids().len()
            ));
        }
        let history = cfg.history().as_deref().unwrap_or_default();
        let non_empty = history.iter().filter(|h| h.empty_layer() != Some(true)).count();
        if !history.is_empty() && non_empty != layers.len() {
            self.problems
                .push(format!("{ctx}: {} layers but {non_empty} history entries that add a layer", layers.len()));
        }
        if let Some(p) = desc.platform() {
            if p.architecture() != cfg.architecture() || p.os() != cfg.os() {
                self.problems.push(format!(
                    "{ctx}: descriptor says {}/{} but the config says {}/{}",
                    p.os(),
                    p.architecture(),
                    cfg.os(),
                    cfg.architecture()
                ));
            }
        }
        for (i, l) in layers.iter().enumerate() {
            let lctx = format!("{ctx} -> layers[{i}]");
            let gzip = match l.media_type() {
                MediaType::ImageLayerGzip => true,
                MediaType::ImageLayer => false,
                other => {
                    self.problems.push(format!("{lctx}: unsupported layer media type \"{other}\""));
                    continue;
                }
            };
            let Some(f) = self.blob(l, &lctx) else { continue };
            let (diff, problems, is_tar) = (f.diff_id, f.tar_problems.clone(), f.is_tar);
            let blob_digest = f.sha256;
            let computed = if gzip { diff } else { blob_digest.filter(|_| is_tar) };
            match (computed, rootfs.diff_ids().get(i)) {
                (None, _) => self.problems.push(format!("{lctx}: blob {} is not a {}", l.digest(), l.media_type())),
                (Some(c), Some(want)) if oci::digest_string(&c) != *want => {
                    self.problems.push(format!("{lctx}: diff_id is sha256:{c}, the config says {want}"))
                }
                _ => {}
            }
            for p in problems {
                self.problems.push(format!("{lctx}: {p}"));
            }
        }
        self.images.push(ImageFound {
            ref_name: oci::ref_name(desc).cloned(),
            manifest: desc.digest().to_string(),
            platform: format!("{}/{}", cfg.os(), cfg.architecture()),
            layers: layers.len(),
        });
    }
}

/// Docker's `manifest.json` must say what `index.json` says: the same config, the same layers in
/// the same order, the reference name as its only tag; and exist only for a single image.
fn docker_index_problems(index: &ImageIndex, docker: &[u8], blobs: &BTreeMap<String, BlobFacts>) -> Vec<String> {
    let found: Vec<oci::DockerManifestEntry> = match serde_json::from_slice(docker) {
        Ok(v) => v,
        Err(e) => return vec![format!("manifest.json is not Docker's archive index: {e}")],
    };
    let read = |digest: &oci::Digest| -> Result<ImageManifest> {
        let hex = oci::sha256_of(digest)?.to_string();
        let json = blobs.get(&hex).and_then(|b| b.json.as_deref()).with_context(|| format!("blob {hex} missing"))?;
        serde_json::from_slice(json).context("not an OCI image manifest")
    };
    match oci::docker_manifest(index, read) {
        Ok(Some(want)) if want == found => Vec::new(),
        Ok(Some(want)) => vec![format!(
            "manifest.json (Docker's index) disagrees with index.json: it says {}, index.json says {}",
            String::from_utf8_lossy(docker),
            serde_json::to_string(&want).unwrap_or_default()
        )],
        Ok(None) => {
            vec!["manifest.json (Docker's index) is only for a single image with a reference name; index.json lists \
             something else (Docker before 25 cannot load a multi-architecture archive)"
                .to_string()]
        }
        Err(e) => vec![format!("manifest.json cannot be checked against index.json: {e:#}")],
    }
}

/// A document's `mediaType` as the problems quote it: `"<type>"`, or `none`.
fn media_type_name(m: &Option<MediaType>) -> String {
    m.as_ref().map(|m| format!("\"{m}\"")).unwrap_or_else(|| "none".to_string())
}

/// Verifies a layout directory or an oci-archive; the error lists every problem found.
pub fn verify_path(path: &Path) -> Result<Report> {
    let (blobs, top) = collect(path)?;
    let mut problems = Vec::new();
    match top.get("oci-layout").map(|b| serde_json::from_slice::<serde_json::Value>(b)) {
        None => problems.push("oci-layout is missing".to_string()),
        Some(Ok(v)) if v.get("imageLayoutVersion").and_then(|v| v.as_str()) == Some("1.0.0") => {}
        Some(_) => problems.push(format!("oci-layout is not {}", oci::OCI_LAYOUT)),
    }
    let mut checker = Checker { blobs: &blobs, problems: Vec::new(), referenced: BTreeSet::new(), images: Vec::new() };
    match top.get("index.json").map(|b| serde_json::from_slice::<ImageIndex>(b)) {
        None => problems.push("index.json is missing".to_string()),
        Some(Err(e)) => problems.push(format!("index.json is not an OCI image index: {e}")),
        Some(Ok(index)) => {
            if index.schema_version() != 2 {
                problems.push(format!("index.json: schemaVersion is {}, expected 2", index.schema_version()));
            }
            if index.media_type().as_ref().is_some_and(|m| *m != MediaType::ImageIndex) {
                problems.push(format!("index.json: mediaType is {}", media_type_name(index.media_type())));
            }
            if index.manifests().is_empty() {
                problems.push("index.json lists no manifests".to_string());
            }
            for (i, d) in index.manifests().iter().enumerate() {
                checker.descriptor(d, &format!("index.json manifests[{i}]"), 0);
            }
            if let Some(docker) = top.get("manifest.json") {
                problems.extend(docker_index_problems(&index, docker, &blobs));
            }
        }
    }
    problems.extend(std::mem::take(&mut checker.problems));
    // Referenced blobs were checked with their context above; the others are checked here.
    for (name, f) in &blobs {
        if checker.referenced.contains(name) {
            continue;
        }
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            problems.push(format!("blobs/sha256/{name}: not a SHA-256 name"));
        } else if f.sha256.map(|d| d.to_string()).as_deref() != Some(name.as_str()) {
            problems.push(format!(
                "blobs/sha256/{name} is corrupt: its content hashes to sha256:{}",
                f.sha256.map(|d| d.to_string()).unwrap_or_default()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{} failed verification:\n  {}", path.display(), problems.join("\n  "));
    }
    let unreferenced = blobs.keys().filter(|k| !checker.referenced.contains(*k)).cloned().collect();
    Ok(Report { images: checker.images, blobs: blobs.len(), bytes: blobs.values().map(|b| b.size).sum(), unreferenced })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_of(entries: &[(&str, u32, tar::EntryType)]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut b = tar::Builder::new(&mut out);
            for (p, mode, t) in entries {
                let mut h = tar::Header::new_ustar();
                h.set_path(p).unwrap();
                h.set_mode(*mode);
                h.set_entry_type(*t);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            b.finish().unwrap();
        }
        out
    }

    #[test]
    fn scan_finds_policy_violations_in_gzip_layers() {
        let raw = tar_of(&[
            ("tmp", 0o1777, tar::EntryType::Directory),
            ("bad", 0o777, tar::EntryType::Directory),
            ("su", 0o4755, tar::EntryType::Regular),
            ("dev", 0o600, tar::EntryType::Char),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let blob = gz.finish().unwrap();
        let f = scan_blob(&blob[..]).unwrap();
        assert_eq!(f.diff_id, Some(Sha256Hex::of_bytes(&raw)));
        assert_eq!(f.sha256, Some(Sha256Hex::of_bytes(&blob)));
        assert_eq!(f.size, blob.len() as u64);
        let all = f.tar_problems.join("\n");
        assert!(all.contains("/bad") && all.contains("/su") && all.contains("dev"), "{all}");
        assert!(!all.contains("/tmp:"), "{all}");
    }

    #[test]
    fn json_blobs_are_kept() {
        let f = scan_blob(&b"{\"a\":1}"[..]).unwrap();
        assert_eq!(f.json.as_deref(), Some(&b"{\"a\":1}"[..]));
        let f = scan_blob(&b"binary"[..]).unwrap();
        assert!(f.json.is_none() && f.diff_id.is_none());
    }

    #[test]
    fn empty_directory_fails_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", verify_path(dir.path()).unwrap_err());
        assert!(err.contains("oci-layout is missing") && err.contains("index.json is missing"), "{err}");
    }
}
