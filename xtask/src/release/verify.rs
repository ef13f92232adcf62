//! `cargo xtask release verify DIR`: anyone can rebuild a release and compare.
//! In: a release directory (its `*.provenance.json` give the version, architectures and where etcd
//! came from; the images' config gives SOURCE_DATE_EPOCH). Out: the release rebuilt under
//! `target/release-verify/`, and every file whose bytes differ named (for an image archive, with
//! the members that differ); an error when anything differs, is missing or is extra.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::build_release;
use crate::acquire::{Provenance, SourceKind, SourcePolicy};
use crate::definition::Definition;
use crate::util::{display_rel, target_dir, Arch, Sha256Hex};

/// Rebuild a release and compare it, file by file, with DIR
#[derive(Debug, clap::Args)]
pub struct Verify {
    /// The release directory (e.g. target/release/3.4.9/, or a download of one)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where etcd comes from for the rebuild [default: the source each provenance records:
    /// release, debian or build]
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<SourcePolicy>,
    /// Where the rebuild goes [default: target/release-verify/]
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
}

/// What a release says about how it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub version: String,
    pub arches: Vec<Arch>,
    pub source: SourceKind,
    pub epoch: u64,
}

/// One file that is not the same in both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// In the release, not in the rebuild.
    Extra(String),
    /// In the rebuild, not in the release.
    Missing(String),
    /// Different bytes; for archives, the members that differ.
    Differs { name: String, members: Vec<String> },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Extra(n) => write!(f, "{n}: in the release, but the rebuild has no such file"),
            Difference::Missing(n) => write!(f, "{n}: missing from the release"),
            Difference::Differs { name, members } if members.is_empty() => write!(f, "{name}: bytes differ"),
            Difference::Differs { name, members } => {
                write!(f, "{name}: bytes differ, in {}", members.join(", "))
            }
        }
    }
}

impl Verify {
    pub fn run(self) -> Result<()> {
        let t = Instant::now();
        let def = Definition::load_default()?;
        let image = def.image.as_ref().context("images/etcd.toml has no [image] section")?;
        let recorded = read_recorded(&self.dir, &image.name)?;
        let source = match self.source.clone() {
            Some(s) => s,
            None => match recorded.source {
                SourceKind::Tarball => SourcePolicy::Release,
                SourceKind::Distro => SourcePolicy::Debian,
                SourceKind::Build => SourcePolicy::Build,
                SourceKind::Dir => bail!(
                    "{}: etcd came from binaries on disk (source dir), which a rebuild cannot fetch: pass \
                     --source dir:PATH with the same binaries",
                    self.dir.display()
                ),
            },
        };
        eprintln!(
            "release verify: rebuilding etcd {} for {} from {} at SOURCE_DATE_EPOCH={}",
            recorded.version,
            recorded.arches.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
            recorded.source.as_str(),
            recorded.epoch
        );
        // Every stage reads the epoch from the environment; nothing else runs yet in this process.
        std::env::set_var("SOURCE_DATE_EPOCH", recorded.epoch.to_string());
        let work = self.work.clone().unwrap_or_else(|| target_dir().join("release-verify"));
        let rebuilt = build_release(&def, &recorded.arches, source, &work, true, Some(recorded.version.clone()))
            .context("cannot rebuild the release")?;
        let differences = compare(&self.dir, &rebuilt.dir)?;
        let files = fs::read_dir(&rebuilt.dir).map(|d| d.count()).unwrap_or(0);
        if differences.is_empty() {
            println!(
                "{}: all {files} files are byte for byte what a rebuild gives ({}) ({:.1} s)",
                self.dir.display(),
                display_rel(&rebuilt.dir),
                t.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        for d in &differences {
            println!("DIFFERS {d}");
        }
        bail!(
            "{} of the release in {} from a rebuild in {}: see above",
            if differences.len() == 1 {
                "1 file differs".to_string()
            } else {
                format!("{} files differ", differences.len())
            },
            self.dir.display(),
            display_rel(&rebuilt.dir)
        )
    }
}

/// Reads the version, architectures, source and SOURCE_DATE_EPOCH a release of the image
/// `image_name` records.
pub fn read_recorded(dir: &Path, image_name: &str) -> Result<Recorded> {
    let mut provs = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot read {}: pass a release directory", dir.display()))? {
        let path = e?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".provenance.json") {
            let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let p: Provenance =
                serde_json::from_str(&text).with_context(|| format!("{}: not a provenance record", path.display()))?;
            provs.push((name, p));
        }
    }
    provs.sort_by(|a, b| a.0.cmp(&b.0));
    let Some((first_name, first)) = provs.first() else {
        bail!("{} holds no *.provenance.json: not a release made by `cargo xtask release`", dir.display());
    };
    for (name, p) in &provs {
        if p.version != first.version || p.source != first.source {
            bail!(
                "{}: {name} records etcd {} from {}, {first_name} {} from {}: a release has one version and source",
                dir.display(),
                p.version,
                p.source.as_str(),
                first.version,
                first.source.as_str()
            );
        }
    }
    let arches: Vec<Arch> = provs.iter().map(|(_, p)| p.arch).collect();
    let archive = dir.join(format!("{}.tar", crate::image::plan::image_stem(image_name, &first.version, first.arch)));
    let epoch = epoch_of(&archive)?;
    Ok(Recorded { version: first.version.clone(), arches, source: first.source, epoch })
}

/// Every member of a tar archive and its SHA-256.
fn members(path: &Path) -> Result<BTreeMap<String, Sha256Hex>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut ar = tar::Archive::new(file);
    let mut out = BTreeMap::new();
    for e in ar.entries().with_context(|| format!("{}: not a tar archive", path.display()))? {
        let mut e = e.with_context(|| format!("{}: unreadable tar entry", path.display()))?;
        let name = e.path().map(|p| p.display().to_string()).unwrap_or_default();
        let mut data = Vec::new();
        e.read_to_end(&mut data).with_context(|| format!("{}: cannot read {name}", path.display()))?;
        out.insert(name, Sha256Hex::of_bytes(&data));
    }
    Ok(out)
}

/// One member of a tar archive.
fn member(path: &Path, wanted: &str) -> Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut ar = tar::Archive::new(file);
    for e in ar.entries().with_context(|| format!("{}: not a tar archive", path.display()))? {
        let mut e = e?;
        if e.path().map(|p| p.display().to_string()).unwrap_or_default() == wanted {
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    bail!("{} has no {wanted}", path.display())
}

/// SOURCE_DATE_EPOCH as the image config of a one-architecture archive records it (`created`).
fn epoch_of(archive: &Path) -> Result<u64> {
    let json = |bytes: Vec<u8>, what: &str| -> Result<serde_json::Value> {
        serde_json::from_slice(&bytes).with_context(|| format!("{}: {what} is not JSON", archive.display()))
    };
    let blob = |digest: &serde_json::Value| -> Result<Vec<u8>> {
        let d = digest.as_str().and_then(|d| d.strip_prefix("sha256:")).context("a digest that is not sha256")?;
        member(archive, &format!("blobs/sha256/{d}"))
    };
    let index = json(member(archive, "index.json")?, "index.json")?;
    let manifest = json(blob(&index["manifests"][0]["digest"])?, "the manifest")?;
    let config = json(blob(&manifest["config"]["digest"])?, "the image config")?;
    let created =
        config["created"].as_str().with_context(|| format!("{}: the config has no created", archive.display()))?;
    let t = time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{}: created {created:?} is not RFC 3339", archive.display()))?;
    u64::try_from(t.unix_timestamp())
        .with_context(|| format!("{}: created {created} is before 1970", archive.display()))
}

/// Every difference between the files of `release` and `rebuilt` (hidden files aside).
pub fn compare(release: &Path, rebuilt: &Path) -> Result<Vec<Difference>> {
    let names = |dir: &Path| -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for e in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.insert(name);
            }
        }
        Ok(out)
    };
    let (have, want) = (names(release)?, names(rebuilt)?);
    let mut out = Vec::new();
    for name in have.union(&want) {
        match (have.contains(name), want.contains(name)) {
            (true, false) => out.push(Difference::Extra(name.clone())),
            (false, true) => out.push(Difference::Missing(name.clone())),
            _ => {
                let (a, b) = (release.join(name), rebuilt.join(name));
                if Sha256Hex::of_file(&a)? == Sha256Hex::of_file(&b)? {
                    continue;
                }
                let mut changed = Vec::new();
                if name.ends_with(".tar") {
                    if let (Ok(ma), Ok(mb)) = (members(&a), members(&b)) {
                        let all: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
                        changed = all.into_iter().filter(|m| ma.get(*m) != mb.get(*m)).cloned().collect();
                    }
                }
                out.push(Difference::Differs { name: name.clone(), members: changed });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("same"), "x").unwrap();
        fs::write(b.join("same"), "x").unwrap();
        fs::write(a.join("extra"), "x").unwrap();
        fs::write(b.join("missing"), "x").unwrap();
        fs::write(a.join("notes"), "x").unwrap();
        fs::write(b.join("notes"), "y").unwrap();
        fs::write(a.join("i.tar"), tar_of(&[("blobs/sha256/1", b"one"), ("index.json", b"{}")])).unwrap();
        fs::write(b.join("i.tar"), tar_of(&[("blobs/sha256/1", b"onE"), ("index.json", b"{}")])).unwrap();
        fs::write(a.join(".hidden"), "x").unwrap();
        let d = compare(&a, &b).unwrap();
        let text: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            text,
            [
                "extra: in the release, but the rebuild has no such file",
                "i.tar: bytes differ, in blobs/sha256/1",
                "missing: missing from the release",
                "notes: bytes differ",
            ]
        );
    }
}
