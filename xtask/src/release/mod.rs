//! Release stage: `cargo xtask release`.
//! In: the image definition (`images/etcd.toml`), verified etcd for each architecture (acquired
//! on demand through `--source`), SOURCE_DATE_EPOCH (default 0).
//! Out: `target/release/<version>/` (or `--out DIR/<version>/`), staged beside and renamed into
//! place only when complete:
//!
//! - `etcd-<V>-linux-<A>.tar`: the oci-archive of each architecture (`podman load -i`);
//! - `etcd-<V>.tar`: the multi-arch OCI layout (an image index) as an oci-archive
//!   (`skopeo copy --all oci-archive:...`), when there are several architectures;
//! - `etcd_<V>.raw`: the portable service image for this machine's architecture;
//! - `etcd-<V>-linux-<A>.provenance.json`: where each architecture's etcd came from;
//! - `etcd-<V>-linux-<A>.spdx.json`: an SPDX 2.3 SBOM per image ([`sbom`]);
//! - `RELEASE-NOTES.md`: what is inside, where it came from, and every published security advisory
//!   that affects the version (`images/advisories.toml`; the SBOMs carry them as security
//!   references);
//! - `SHA256SUMS`: every other file, in `sha256sum -c` format.
//!
//! The images and the portable image are built in `<out>/.build/` (kept between runs, so that
//! a rerun with unchanged inputs only copies them again). Two runs with the same inputs and
//! SOURCE_DATE_EPOCH give byte-identical files. Publishing the image is [`publish`].

pub mod publish;
pub mod sbom;
pub mod sign;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::acquire::SourcePolicy;
use crate::definition::Definition;
use crate::image::{self, bake, BuildArgs};
use crate::util::{display_rel, source_date_epoch, target_dir, write_atomic, Arch, Sha256Hex, StagingDir};

/// Build every artifact of a release (images per architecture and multi-arch, portable image,
/// provenance, SPDX SBOMs, release notes) into target/release/<version>/ with a SHA256SUMS over
/// all of them; `release verify DIR` rebuilds a release and names every file that differs
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Release {
    #[command(subcommand)]
    pub sub: Option<ReleaseSub>,
    /// Architecture to release; repeat for several [default: the definition's etcd.arches]
    #[arg(long = "arch", value_name = "ARCH")]
    pub arches: Vec<Arch>,
    /// Where etcd may come from when it is not acquired yet
    #[arg(long, default_value_t, value_name = "SOURCE")]
    pub source: SourcePolicy,
    /// Output root: the release goes to DIR/<version>/, the build cache to DIR/.build/
    /// [default: target/release]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Rebuild the images even when their recorded inputs say they are up to date
    #[arg(long)]
    pub force: bool,
}

/// One file of a finished release.
#[derive(Debug, Clone)]
pub struct ReleaseFile {
    pub name: String,
    pub sha256: Sha256Hex,
    pub size: u64,
}

/// What `release` produced.
#[derive(Debug, Clone)]
pub struct Released {
    pub version: String,
    pub dir: PathBuf,
    pub files: Vec<ReleaseFile>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ReleaseSub {
    /// Rebuild the release in DIR from its provenance (same version, architectures, sources and
    /// SOURCE_DATE_EPOCH) and compare: every file whose bytes differ is named (for an image
    /// archive, with the blobs that differ); exits non-zero on any difference
    Verify(verify::Verify),
}

impl Release {
    pub fn run(self) -> Result<()> {
        if let Some(ReleaseSub::Verify(v)) = self.sub {
            return v.run();
        }
        let def = Definition::load_default()?;
        let out = self.out.clone().unwrap_or_else(|| target_dir().join("release"));
        let released = build_release(&def, &self.arches, self.source, &out, self.force, None)?;
        println!("release {} -> {}/", released.version, display_rel(&released.dir));
        for f in &released.files {
            println!("  {}  {:>10}  {}", f.sha256, crate::util::human_bytes(f.size), f.name);
        }
        println!("verify a download with: sha256sum -c SHA256SUMS");
        let multi = format!("etcd-{}.tar", released.version);
        if released.files.iter().any(|f| f.name == multi) {
            println!(
                "{multi} is the multi-arch image: for skopeo, podman and registries; Docker before 25 cannot \
                 load it (docker load -i etcd-{}-linux-<arch>.tar instead)",
                released.version
            );
        }
        Ok(())
    }
}

/// Builds the release of `arches` (default: the definition's) into `<out>/<version>/`, of etcd
/// `version` (default: the definition's), with timestamps at SOURCE_DATE_EPOCH.
pub fn build_release(
    def: &Definition,
    arches: &[Arch],
    source: SourcePolicy,
    out: &Path,
    force: bool,
    version: Option<String>,
) -> Result<Released> {
    let spec = def.image.as_ref().with_context(|| {
        format!("image definition {} has no [image] section: add one (see images/etcd.toml)", def.path.display())
    })?;
    let epoch = source_date_epoch()?;
    let arches = dedup(if arches.is_empty() { &def.etcd.arches } else { arches });
    if arches.is_empty() {
        bail!(
            "field etcd.arches of {} is empty and no --arch was given: name at least one architecture",
            def.path.display()
        );
    }
    let work = out.join(".build");

    // Acquire once; the image stage then takes exactly these directories.
    let acquire_args = BuildArgs {
        arches: arches.clone(),
        all_arches: false,
        out: Some(work.join("images")),
        load: false,
        source,
        etcd_dir: vec![],
        force,
        version,
    };
    let acquired = image::acquire_all(def, &acquire_args)?;
    let versions: BTreeSet<&str> = acquired.iter().map(|a| a.provenance.version.as_str()).collect();
    if versions.len() != 1 {
        bail!(
            "the architectures carry different etcd versions ({}): a release has one version; fetch the same version for each (--source)",
            versions.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let version = acquired[0].provenance.version.clone();
    let advisories = crate::advisories::load(&crate::advisories::default_path())?;
    if let Some(w) = crate::advisories::warning(&advisories, &version) {
        eprintln!("warning: {w}");
    }
    let build_args = BuildArgs { etcd_dir: acquired.iter().map(|a| a.dir.clone()).collect(), ..acquire_args };
    let builds = image::build_images(def, &build_args)?;

    let host_acquired = acquired.iter().find(|a| Some(a.provenance.arch) == Arch::host());
    let portable = match host_acquired {
        Some(a) => {
            let env = def.runtime_env(&a.provenance.version, a.provenance.arch)?;
            Some(crate::portable::build(a, &work.join("portable"), epoch, true, &env)?)
        }
        None => {
            eprintln!(
                "note: the portable image is built for this machine's architecture only, which is not among {}: leaving it out",
                arches.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
            );
            None
        }
    };

    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let dest = out.join(&version);
    let staging = StagingDir::beside(&dest)?;
    let stage = staging.path();

    for b in &builds {
        let name = file_name(&b.archive)?;
        copy_file(&b.archive, &stage.join(&name))?;
        let Some(arch) = b.arch else { continue };
        let a = acquired
            .iter()
            .find(|a| a.provenance.arch == arch)
            .with_context(|| format!("no acquisition for the {arch} image (an engine bug)"))?;
        let stem = name.trim_end_matches(".tar");
        fs::copy(a.dir.join("provenance.json"), stage.join(format!("{stem}.provenance.json")))
            .with_context(|| format!("cannot copy {}/provenance.json", a.dir.display()))?;
        let plan = bake::plan(spec, a, epoch, &def.runtime_env(&a.provenance.version, arch)?)
            .with_context(|| format!("cannot plan the {arch} image for its SBOM"))?;
        let doc = sbom::document(&sbom::SbomInput {
            spec,
            acquired: a,
            plan: &plan,
            built: b,
            archive_name: &name,
            epoch,
            advisories: &advisories,
        })?;
        write_atomic(&stage.join(format!("{stem}.spdx.json")), &doc, 0o644)?;
    }
    if let Some(p) = &portable {
        let raw = p.raw.as_ref().context("the portable stage wrote no .raw image (an engine bug)")?;
        copy_file(raw, &stage.join(file_name(raw)?))?;
    }

    let notes = release_notes(&version, &acquired, &advisories);
    write_atomic(&stage.join("RELEASE-NOTES.md"), notes.as_bytes(), 0o644)?;

    let files = write_sums(stage)?;
    staging.commit(&dest)?;
    Ok(Released { version, dir: dest, files })
}

/// The short release note: what is inside, where it came from, how to check it, and every
/// published advisory that affects the version (never left out, even when shipped on purpose).
pub fn release_notes(
    version: &str,
    acquired: &[crate::acquire::Acquired],
    advisories: &crate::advisories::Advisories,
) -> String {
    let mut out = format!("# etcd {version}\n\n");
    out.push_str("Built by `cargo xtask release`. Check every file with `sha256sum -c SHA256SUMS`.\n\n");
    for a in acquired {
        let p = &a.provenance;
        out.push_str(&format!("- {}: etcd {} from {} ({})\n", p.arch, p.version, p.source.as_str(), p.origin));
    }
    let list = crate::advisories::affecting(advisories, version);
    out.push_str("\n## Known vulnerabilities\n\n");
    if !advisories.lines.contains(&crate::definition::release_line(version)) {
        out.push_str(&format!(
            "Not checked: images/advisories.toml covers etcd {} only.\n",
            advisories.lines.join(", ")
        ));
        return out;
    }
    if list.is_empty() {
        out.push_str("No published etcd security advisory affects this version (images/advisories.toml).\n");
        return out;
    }
    out.push_str(&format!(
        "{} published security advisor{} affect etcd {version} (the SBOMs list them as security references):\n\n",
        list.len(),
        if list.len() == 1 { "y" } else { "ies" }
    ));
    for a in &list {
        out.push_str(&format!(
            "- [{}]({}) ({}): {}. Fixed in {}.\n",
            a.advisory.label(),
            a.advisory.url,
            a.advisory.severity,
            a.advisory.summary,
            a.fixed
        ));
    }
    if let Some(f) = crate::advisories::fixed_by(&list) {
        out.push_str(&format!("\netcd {f} fixes all of them.\n"));
    }
    out
}

fn dedup(arches: &[Arch]) -> Vec<Arch> {
    let mut seen = BTreeSet::new();
    arches.iter().copied().filter(|a| seen.insert(*a)).collect()
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no file name", path.display()))
}

/// Copies a finished artifact into the staged release. A copy, not a hard link: a release file
/// edited in place must never change the build cache it came from.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Writes `SHA256SUMS` over every file of `dir` (sorted by name, `sha256sum -c` format) and
/// returns the files, SHA256SUMS last.
pub fn write_sums(dir: &Path) -> Result<Vec<ReleaseFile>> {
    let mut files: BTreeMap<String, ReleaseFile> = BTreeMap::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "SHA256SUMS" || name.starts_with('.') {
            continue;
        }
        if !e.file_type().with_context(|| format!("cannot stat {}", e.path().display()))?.is_file() {
            bail!("{} is not a regular file: a release holds files only (an engine bug)", e.path().display());
        }
        let size = e.metadata().with_context(|| format!("cannot stat {}", e.path().display()))?.len();
        files.insert(name.clone(), ReleaseFile { name, sha256: Sha256Hex::of_file(&e.path())?, size });
    }
    let mut text = String::new();
    for f in files.values() {
        text.push_str(&format!("{}  {}\n", f.sha256, f.name));
    }
    write_atomic(&dir.join("SHA256SUMS"), text.as_bytes(), 0o644)?;
    let mut out: Vec<ReleaseFile> = files.into_values().collect();
    out.push(ReleaseFile {
        name: "SHA256SUMS".into(),
        sha256: Sha256Hex::of_bytes(text.as_bytes()),
        size: text.len() as u64,
    });
    Ok(out)
}

/// Reads a `SHA256SUMS` file and checks every file it names in `dir`; returns how many.
pub fn check_sums(dir: &Path) -> Result<usize> {
    let path = dir.join("SHA256SUMS");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let (sum, name) = line
            .split_once("  ")
            .with_context(|| format!("{}:{}: expected `<sha256>  <file>`", path.display(), i + 1))?;
        let want: Sha256Hex = sum.parse().with_context(|| format!("{}:{}", path.display(), i + 1))?;
        let got = Sha256Hex::of_file(&dir.join(name))?;
        if got != want {
            bail!("{}: {name} has SHA-256 {got}, SHA256SUMS says {want}", dir.display());
        }
        n += 1;
    }
    Ok(n)
}
