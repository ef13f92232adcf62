//! Baking: verified etcd binaries + the `[image]` definition in, an OCI image layout directory
//! and an oci-archive `.tar` out (per architecture, plus a multi-arch index when asked).
//!
//! Steps, in this order:
//! 1. [`plan`] (in `plan.rs`): resolve everything into a frozen [`Plan`] (every layer entry with its owner,
//!    mode, size and SHA-256; the image config without diff_ids). The plan's hash is the
//!    build's *inputs*: definition, binaries, runtime libraries and SOURCE_DATE_EPOCH.
//! 2. If `<out>/<name>.inputs.json` records the same inputs and the outputs are in place,
//!    stop: "up to date".
//! 3. [`write_image`]: stream the layers (in parallel, one thread per layer) into a staging
//!    directory, then config, manifest, `index.json`, `oci-layout`; verify the staged layout;
//!    write the archive beside it; move both into place; record the inputs last.
//!
//! Layers: `base` (users, directories, small files, the ELF interpreter and libraries a
//! dynamic etcd needs), then one layer per binary, so that two cores compress in parallel and
//! an unchanged binary keeps its layer digest.
//!
//! The interpreter and libraries come from the build host for the host's architecture, and
//! from the acquisition's `sysroot/` when it has one (a foreign architecture's C library, taken
//! from Debian by the acquire stage and hashed in its provenance): see [`crate::image::elf::runtime_root`].

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::image::layer::{self, Entry};
use oci_spec::image::{ImageIndexBuilder, ImageManifestBuilder};

use crate::image::oci::{self, Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
use crate::image::verify;
use crate::util::{each_in_thread, temp_sibling, write_atomic, Arch, HashingWriter, Sha256Hex, StagingDir};

pub use super::plan::{plan, repo_stem, LayerPlan, Plan, FORMAT};

/// What a build produced (or found up to date); recorded as `<stem>.inputs.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub format: String,
    /// Hash of the plan (see [`Plan::inputs`]).
    pub inputs: Sha256Hex,
    pub reference: String,
    /// Manifest digest (single arch) or image index digest (multi-arch), `sha256:...`.
    pub digest: String,
    pub archive_size: u64,
    pub archive_sha256: Sha256Hex,
    /// Bytes of the regular files in the image, of the uncompressed layers, of the gzip layers.
    pub files_size: u64,
    pub tar_size: u64,
    pub layers_size: u64,
}

#[derive(Debug, Clone)]
pub struct Built {
    pub stamp: Stamp,
    pub arch: Option<Arch>,
    pub layout: PathBuf,
    pub archive: PathBuf,
    pub up_to_date: bool,
}

fn paths(out_dir: &Path, stem: &str) -> (PathBuf, PathBuf, PathBuf) {
    (out_dir.join(stem), out_dir.join(format!("{stem}.tar")), out_dir.join(format!("{stem}.inputs.json")))
}

/// The recorded build, if `inputs` match and the outputs it names are in place.
pub fn up_to_date(out_dir: &Path, stem: &str, inputs: &Sha256Hex) -> Option<Stamp> {
    let (layout, archive, _) = paths(out_dir, stem);
    let stamp = recorded(out_dir, stem)?;
    let hex = stamp.digest.strip_prefix("sha256:")?;
    let ok = stamp.format == FORMAT
        && stamp.inputs == *inputs
        && layout.join("index.json").is_file()
        && layout.join("oci-layout").is_file()
        && layout.join("blobs/sha256").join(hex).is_file()
        && fs::metadata(&archive).map(|m| m.len() == stamp.archive_size).unwrap_or(false);
    ok.then_some(stamp)
}

/// What the last build of `stem` in `out_dir` recorded (`<stem>.inputs.json`), if it is there.
pub fn recorded(out_dir: &Path, stem: &str) -> Option<Stamp> {
    serde_json::from_slice(&fs::read(paths(out_dir, stem).2).ok()?).ok()
}

/// Writes a blob (small, in memory: configs, manifests, indexes) and returns its descriptor.
fn write_blob(blobs: &Path, media_type: MediaType, bytes: &[u8]) -> Result<Descriptor> {
    let digest = Sha256Hex::of_bytes(bytes);
    write_atomic(&blobs.join(digest.to_string()), bytes, 0o644)?;
    oci::descriptor(media_type, &digest, bytes.len() as u64)
}

/// An image index of `manifests`, written the one way the engine writes indexes.
fn index_of(manifests: Vec<Descriptor>) -> Result<ImageIndex> {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .context("cannot describe the image index")
}

/// Builds (or finds up to date) the image of `plan` under `out_dir`.
pub fn build(plan: &Plan, out_dir: &Path) -> Result<Built> {
    let inputs = plan.inputs()?;
    let (layout, archive, _) = paths(out_dir, &plan.stem);
    if let Some(stamp) = up_to_date(out_dir, &plan.stem, &inputs) {
        return Ok(Built { stamp, arch: Some(plan.arch), layout, archive, up_to_date: true });
    }
    let stamp = write_image(plan, out_dir, inputs)?;
    Ok(Built { stamp, arch: Some(plan.arch), layout, archive, up_to_date: false })
}

/// Writes the layout and archive of `plan` (always; see [`build`] for the up-to-date check).
pub fn write_image(plan: &Plan, out_dir: &Path, inputs: Sha256Hex) -> Result<Stamp> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let (layout, _, _) = paths(out_dir, &plan.stem);
    let staging = StagingDir::beside(&layout)?;
    let blobs = staging.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;

    // Layers, one thread each: gzip is the bottleneck and layers are independent.
    let results = each_in_thread(&plan.layers, "a layer writer thread", |i, l| {
        layer::write_layer(&l.entries, plan.epoch, plan.gzip_level, &blobs, &i.to_string())
    });
    let mut layer_blobs = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        layer_blobs.push(r.with_context(|| format!("cannot write layer {i} ({})", plan.layers[i].created_by))?);
    }

    let mut config = plan.config.clone();
    config.rootfs_mut().set_diff_ids(layer_blobs.iter().map(|l| oci::digest_string(&l.diff_id)).collect());
    let config_desc = write_blob(&blobs, MediaType::ImageConfig, &oci::to_canonical_json(&config)?)?;
    let layers = layer_blobs
        .iter()
        .map(|l| oci::descriptor(MediaType::ImageLayerGzip, &l.digest, l.size))
        .collect::<Result<Vec<_>>>()?;
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layers)
        .build()
        .context("cannot describe the image manifest")?;
    if !plan.annotations.is_empty() {
        manifest.set_annotations(Some(plan.annotations.clone().into_iter().collect()));
    }
    let manifest_desc = write_blob(&blobs, MediaType::ImageManifest, &oci::to_canonical_json(&manifest)?)?;
    let mut manifest_desc = oci::annotate(manifest_desc, oci::ANNOTATION_REF_NAME, plan.reference.clone());
    manifest_desc.set_platform(Some(oci::platform(plan.arch)?));
    let stamp = Stamp {
        format: FORMAT.into(),
        inputs,
        reference: plan.reference.clone(),
        digest: manifest_desc.digest().to_string(),
        archive_size: 0,
        archive_sha256: Sha256Hex([0; 32]),
        files_size: plan.files_size(),
        tar_size: layer_blobs.iter().map(|l| l.tar_size).sum(),
        layers_size: layer_blobs.iter().map(|l| l.size).sum(),
    };
    finish_layout(staging, &layout, manifest_desc, plan.epoch, out_dir, &plan.stem, stamp)
}

/// Writes `index.json` and `oci-layout` into the staged layout, verifies it, writes the archive,
/// moves both into place and records `stamp` (completed with the archive's sum and size) last.
fn finish_layout(
    staging: StagingDir,
    layout: &Path,
    top: Descriptor,
    epoch: u64,
    out_dir: &Path,
    stem: &str,
    mut stamp: Stamp,
) -> Result<Stamp> {
    let index = index_of(vec![top])?;
    write_atomic(&staging.path().join("index.json"), &oci::to_canonical_json(&index)?, 0o644)?;
    write_atomic(&staging.path().join("oci-layout"), oci::OCI_LAYOUT.as_bytes(), 0o644)?;
    verify::verify_path(staging.path())
        .context("the freshly written image failed its own verification (an engine bug)")?;

    let (_, archive, stamp_path) = paths(out_dir, stem);
    let tmp_archive = temp_sibling(&archive);
    let written = write_archive(staging.path(), &tmp_archive, epoch);
    let (sha, size) = match written {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp_archive);
            return Err(e);
        }
    };
    // The old stamp goes first: an interrupted replacement is then simply rebuilt next time.
    if stamp_path.exists() {
        fs::remove_file(&stamp_path).with_context(|| format!("cannot remove {}", stamp_path.display()))?;
    }
    if let Err(e) = staging.commit(layout) {
        let _ = fs::remove_file(&tmp_archive);
        return Err(e);
    }
    fs::rename(&tmp_archive, &archive)
        .with_context(|| format!("cannot move {} to {}", tmp_archive.display(), archive.display()))?;
    stamp.archive_sha256 = sha;
    stamp.archive_size = size;
    let mut text = serde_json::to_vec_pretty(&stamp).context("cannot serialise the build record")?;
    text.push(b'\n');
    write_atomic(&stamp_path, &text, 0o644)?;
    Ok(stamp)
}

/// Writes the oci-archive of a layout directory: a plain tar with `blobs/`, `blobs/sha256/`,
/// every blob, `index.json`, Docker's `manifest.json` (for a single-architecture image) and
/// `oci-layout`, sorted, root-owned, mtime = epoch.
pub fn write_archive(layout: &Path, dest: &Path, epoch: u64) -> Result<(Sha256Hex, u64)> {
    let mut entries = vec![Entry::dir("blobs", 0o755, 0, 0), Entry::dir("blobs/sha256", 0o755, 0, 0)];
    let blobs = layout.join("blobs/sha256");
    let mut names = Vec::new();
    for e in fs::read_dir(&blobs).with_context(|| format!("cannot list {}", blobs.display()))? {
        let name =
            e.with_context(|| format!("cannot list {}", blobs.display()))?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    for n in names {
        // A blob's name is its SHA-256 (verified just before); write_tar re-checks while copying.
        let sha: Sha256Hex = n.parse().with_context(|| format!("{}: blob name {n:?}", blobs.display()))?;
        entries.push(Entry::host_known(&format!("blobs/sha256/{n}"), 0o644, 0, 0, &blobs.join(&n), sha)?);
    }
    entries.push(Entry::host("index.json", 0o644, 0, 0, &layout.join("index.json"))?);
    // Docker's own index beside OCI's (as BuildKit's OCI exporter writes it): `docker load`
    // before Docker 25 reads only this file. Single-architecture archives only.
    let index_path = layout.join("index.json");
    let index: ImageIndex = serde_json::from_slice(
        &fs::read(&index_path).with_context(|| format!("cannot read {}", index_path.display()))?,
    )
    .with_context(|| format!("{} is not an OCI image index", index_path.display()))?;
    let read_manifest = |digest: &Digest| -> Result<ImageManifest> {
        let p = blobs.join(oci::sha256_of(digest)?.to_string());
        serde_json::from_slice(&fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?)
            .with_context(|| format!("{} is not an OCI image manifest", p.display()))
    };
    if let Some(docker) = oci::docker_manifest(&index, read_manifest)? {
        entries.push(Entry::inline("manifest.json", 0o644, 0, 0, oci::to_canonical_json(&docker)?));
    }
    entries.push(Entry::host("oci-layout", 0o644, 0, 0, &layout.join("oci-layout"))?);

    let file = fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    layer::write_tar(&entries, epoch, &mut w)?;
    let (buffered, sha, size) = w.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", dest.display()))?;
    Ok((sha, size))
}

/// Builds the multi-arch layout `<out>/<stem>` (and its archive) from per-arch builds: their
/// blobs (hard-linked when possible), an image index listing each manifest with its platform,
/// and `index.json` naming that index `reference`.
pub fn build_multi(builds: &[Built], out_dir: &Path, stem: &str, reference: &str, epoch: u64) -> Result<Built> {
    let mut inputs_text = format!("{FORMAT}\nmulti\n{reference}\n{epoch}\n");
    for b in builds {
        inputs_text.push_str(&format!("{} {}\n", b.arch.map(|a| a.as_str()).unwrap_or("?"), b.stamp.digest));
    }
    let inputs = Sha256Hex::of_bytes(inputs_text.as_bytes());
    let (layout, archive, _) = paths(out_dir, stem);
    if let Some(stamp) = up_to_date(out_dir, stem, &inputs) {
        return Ok(Built { stamp, arch: None, layout, archive, up_to_date: true });
    }
    let staging = StagingDir::beside(&layout)?;
    let blobs = staging.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let mut manifests = Vec::new();
    for b in builds {
        let arch = b.arch.context("a multi-arch index is made of single-arch images")?;
        let src = b.layout.join("blobs/sha256");
        for e in fs::read_dir(&src).with_context(|| format!("cannot list {}", src.display()))? {
            let e = e.with_context(|| format!("cannot list {}", src.display()))?;
            let dest = blobs.join(e.file_name());
            if dest.exists() {
                continue;
            }
            if fs::hard_link(e.path(), &dest).is_err() {
                fs::copy(e.path(), &dest)
                    .with_context(|| format!("cannot copy {} to {}", e.path().display(), dest.display()))?;
            }
        }
        let hex = oci::parse_digest(&b.stamp.digest)?;
        let size = fs::metadata(src.join(hex.to_string()))
            .with_context(|| format!("manifest {} of {arch} is missing", b.stamp.digest))?
            .len();
        let mut desc = oci::descriptor(MediaType::ImageManifest, &hex, size)?;
        desc.set_platform(Some(oci::platform(arch)?));
        manifests.push(desc);
    }
    let index = index_of(manifests)?;
    let top = write_blob(&blobs, MediaType::ImageIndex, &oci::to_canonical_json(&index)?)?;
    let top = oci::annotate(top, oci::ANNOTATION_REF_NAME, reference);
    let stamp = Stamp {
        format: FORMAT.into(),
        inputs,
        reference: reference.to_string(),
        digest: top.digest().to_string(),
        archive_size: 0,
        archive_sha256: Sha256Hex([0; 32]),
        files_size: builds.iter().map(|b| b.stamp.files_size).sum(),
        tar_size: builds.iter().map(|b| b.stamp.tar_size).sum(),
        layers_size: builds.iter().map(|b| b.stamp.layers_size).sum(),
    };
    let stamp = finish_layout(staging, &layout, top, epoch, out_dir, stem, stamp)?;
    Ok(Built { stamp, arch: None, layout, archive, up_to_date: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acquire::{Acquired, Provenance, SourceKind};
    use crate::image::spec::ImageSpec;
    use std::collections::BTreeMap;

    fn fake_acquired(dir: &Path, arch: Arch, names: &[&str]) -> Acquired {
        let mut files = BTreeMap::new();
        for n in names {
            fs::write(dir.join(n), crate::image::elf::tests::fake_static_elf(arch.elf_machine())).unwrap();
            files.insert(n.to_string(), Sha256Hex::of_file(&dir.join(n)).unwrap());
        }
        let provenance = Provenance {
            source: SourceKind::Tarball,
            version: "3.5.1".into(),
            arch,
            origin: "test".into(),
            artifacts: BTreeMap::new(),
            files,
            reported_version: None,
            details: BTreeMap::new(),
        };
        Acquired { dir: dir.to_path_buf(), provenance }
    }

    #[test]
    fn plan_lists_parents_first_and_its_inputs_follow_every_input() {
        let spec: ImageSpec = toml::from_str(crate::image::spec::tests::MINIMAL).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let acq = fake_acquired(dir.path(), Arch::Amd64, &["etcd", "etcdctl"]);
        let p = plan(&spec, &acq, 0, &BTreeMap::new()).unwrap();
        let paths = |i: usize| -> Vec<String> { p.layers[i].entries.iter().map(|e| e.path.clone()).collect() };
        assert_eq!(paths(0), ["etc", "etc/group", "etc/passwd", "tmp", "var", "var/lib", "var/lib/etcd"]);
        assert_eq!(paths(1), ["usr", "usr/local", "usr/local/bin", "usr/local/bin/etcd"]);
        assert_eq!(paths(2), ["usr", "usr/local", "usr/local/bin", "usr/local/bin/etcdctl"]);
        assert_eq!(p.reference, "localhost/etcd:3.5.1");
        assert_eq!(p.stem, "etcd-3.5.1-linux-amd64");
        assert_eq!(p.config.config().as_ref().and_then(|c| c.user().as_deref()), Some("10001:10001"));
        assert_eq!(p.config.history().as_ref().map(Vec::len), Some(3));

        let same = plan(&spec, &acq, 0, &BTreeMap::new()).unwrap();
        assert_eq!(p.inputs().unwrap(), same.inputs().unwrap());
        assert_ne!(p.inputs().unwrap(), plan(&spec, &acq, 1, &BTreeMap::new()).unwrap().inputs().unwrap());
        let mut other = spec.clone();
        other.gzip_level = 9;
        assert_ne!(p.inputs().unwrap(), plan(&other, &acq, 0, &BTreeMap::new()).unwrap().inputs().unwrap());

        // A required binary that acquire did not deliver is an error naming the fix.
        fs::remove_file(dir.path().join("etcdctl")).unwrap();
        let err = format!("{:#}", plan(&spec, &acq, 0, &BTreeMap::new()).unwrap_err());
        assert!(err.contains("etcdctl") && err.contains("cargo xtask fetch"), "{err}");
    }

    #[test]
    fn a_binary_changed_after_acquire_fails_the_build_and_leaves_nothing() {
        let spec: ImageSpec = toml::from_str(crate::image::spec::tests::MINIMAL).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let acq = fake_acquired(dir.path(), Arch::Amd64, &["etcd", "etcdctl"]);
        let mut tampered = crate::image::elf::tests::fake_static_elf(62);
        tampered.push(1);
        fs::write(dir.path().join("etcd"), tampered).unwrap();
        let p = plan(&spec, &acq, 0, &BTreeMap::new()).unwrap();
        let out = dir.path().join("out");
        let err = format!("{:#}", build(&p, &out).unwrap_err());
        assert!(err.contains("is not the file that was verified"), "{err}");
        let left: Vec<_> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
