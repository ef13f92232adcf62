//! OCI image stage: `cargo xtask image`.
//! In: the image definition (`images/etcd.toml`, sections `[etcd]` and `[image]`), verified etcd
//! binaries (acquired on demand, or `--etcd-dir`), SOURCE_DATE_EPOCH (default 0).
//! Out, per architecture under `target/images/` (or `--out`): an OCI image layout directory
//! `etcd-V-linux-A/`, its oci-archive `etcd-V-linux-A.tar` (loadable with `podman load`, named
//! `localhost/etcd:V`), and `etcd-V-linux-A.inputs.json` (what it was built from); with several
//! architectures also a multi-arch layout `etcd-V/` and `etcd-V.tar` (an image index).
//!
//! Entry point: [`ImageCmd::run`]. Stage code: [`bake`] (plan, write, archive), [`layer`]
//! (streamed tar+gzip), [`elf`] (what a dynamic etcd needs), [`oci`] (JSON documents),
//! [`verify`] (independent check), [`podman`] (host adaptation, load), `bench`.

mod bench;
pub mod build;
pub mod elf;
pub mod podman;
pub mod spec;
pub mod verify;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::acquire::{self, AcquireOptions, Acquired, Provenance, SourcePolicy};
use crate::definition::Definition;
use crate::util::{display_rel, source_date_epoch, target_dir, Arch};

pub use bake::Built;
pub use build::{bake, layer, oci, plan};

/// Bake a minimal, reproducible, non-root etcd OCI image (layout + oci-archive), verify it,
/// and optionally load it into podman.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ImageCmd {
    #[command(subcommand)]
    pub sub: Option<ImageSub>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageSub {
    /// Re-hash every blob of an image layout directory or oci-archive and check diff_ids,
    /// sizes, media types, references and the layer hardening rules.
    Verify {
        /// A layout directory (with index.json) or an oci-archive .tar.
        path: PathBuf,
    },
    /// Time our bake against `podman build` + `podman save`, compare the image size with the
    /// files in it, and time a no-op rebuild.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Architecture to build; repeat for several (then a multi-arch index is written too).
    /// Default: the host's architecture only.
    #[arg(long = "arch", value_name = "ARCH")]
    pub arches: Vec<Arch>,
    /// Build every architecture the definition lists in etcd.arches.
    #[arg(long, conflicts_with = "arches")]
    pub all_arches: bool,
    /// Output directory [default: target/images].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Load the image into podman afterwards (the host architecture's, or the only one built).
    #[arg(long)]
    pub load: bool,
    /// Where etcd may come from when it is not cached yet.
    #[arg(long, default_value_t, value_name = "SOURCE")]
    pub source: SourcePolicy,
    /// etcd version to build (default: the definition's etcd.version), acquired like
    /// `cargo xtask fetch --etcd-version V`. The image carries the version actually shipped
    /// (a Debian fallback may ship another patch release of the same line).
    #[arg(long = "etcd-version", value_name = "V", conflicts_with = "etcd_dir")]
    pub version: Option<String>,
    /// Use the verified binaries in DIR (laid out like `cargo xtask fetch` output: etcd,
    /// etcdctl, provenance.json) instead of acquiring; repeat for several architectures.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["all_arches", "source"])]
    pub etcd_dir: Vec<PathBuf>,
    /// Rebuild even when the recorded inputs say the output is up to date.
    #[arg(long)]
    pub force: bool,
}

impl ImageCmd {
    pub fn run(self) -> Result<()> {
        match self.sub {
            Some(ImageSub::Verify { path }) => {
                let report = verify::verify_path(&path)?;
                print_verify(&path, &report);
                Ok(())
            }
            Some(ImageSub::Bench(args)) => bench::run(args),
            None => {
                let def = Definition::load_default()?;
                let builds = build_images(&def, &self.build)?;
                let versions: std::collections::BTreeSet<&str> =
                    builds.iter().filter_map(|b| b.stamp.reference.rsplit(':').next()).collect();
                for v in versions {
                    crate::advisories::warn_if_affected(v)?;
                }
                if self.build.load {
                    let host = Arch::host();
                    let pick = builds
                        .iter()
                        .find(|b| b.arch.is_some() && b.arch == host)
                        .or_else(|| builds.iter().find(|b| b.arch.is_some()))
                        .context("no single-architecture image was built, nothing to load")?;
                    let name = podman::load(&pick.archive)?;
                    println!("loaded {name}");
                }
                Ok(())
            }
        }
    }
}

/// Reads `provenance.json` from a directory of verified binaries.
pub fn acquired_from_dir(dir: &Path) -> Result<Acquired> {
    let provenance =
        Provenance::read(dir).context("--etcd-dir needs a directory laid out like `cargo xtask fetch` output")?;
    Ok(Acquired { dir: dir.to_path_buf(), provenance })
}

/// The architectures to build: `--arch`, or all of the definition's with `--all-arches`, or the host's.
pub fn chosen_arches(def: &Definition, args: &BuildArgs) -> Result<Vec<Arch>> {
    let list: Vec<Arch> = if !args.arches.is_empty() {
        args.arches.clone()
    } else if args.all_arches {
        def.etcd.arches.clone()
    } else {
        vec![Arch::host().context(
            "this machine's architecture has no etcd build: pass --arch (amd64, arm64, ppc64le, s390x) or --all-arches",
        )?]
    };
    let mut seen = BTreeSet::new();
    Ok(list.into_iter().filter(|a| seen.insert(*a)).collect())
}

/// Gets verified binaries for every requested architecture.
pub fn acquire_all(def: &Definition, args: &BuildArgs) -> Result<Vec<Acquired>> {
    if !args.etcd_dir.is_empty() {
        let mut out = Vec::new();
        for d in &args.etcd_dir {
            let a = acquired_from_dir(d)?;
            if !args.arches.is_empty() && !args.arches.contains(&a.provenance.arch) {
                bail!("--etcd-dir {} holds etcd for {}, which no --arch asks for", d.display(), a.provenance.arch);
            }
            if out.iter().any(|o: &Acquired| o.provenance.arch == a.provenance.arch) {
                bail!("two --etcd-dir directories hold etcd for {}: give one per architecture", a.provenance.arch);
            }
            out.push(a);
        }
        for want in &args.arches {
            if !out.iter().any(|a| a.provenance.arch == *want) {
                bail!("--arch {want} is asked for but no --etcd-dir holds etcd for it");
            }
        }
        return Ok(out);
    }
    let opts = AcquireOptions { source: args.source.clone(), version: args.version.clone(), ..Default::default() };
    chosen_arches(def, args)?
        .into_iter()
        .map(|arch| {
            acquire::ensure(def, arch, &opts).with_context(|| {
                format!("cannot get verified etcd binaries for {arch} (see `cargo xtask fetch --arch {arch} --help`; build only the host architecture by leaving out --arch/--all-arches)")
            })
        })
        .collect()
}

/// Builds every requested image (and the multi-arch index when there are several), printing
/// digest, size and path of each.
pub fn build_images(def: &Definition, args: &BuildArgs) -> Result<Vec<Built>> {
    let spec = def.image.as_ref().with_context(|| {
        format!("image definition {} has no [image] section: add one (see images/etcd.toml)", def.path.display())
    })?;
    let epoch = source_date_epoch()?;
    let out = args.out.clone().unwrap_or_else(|| target_dir().join("images"));
    let acquired = acquire_all(def, args)?;
    let mut builds = Vec::new();
    let mut versions = BTreeSet::new();
    for a in &acquired {
        let plan = bake::plan(spec, a, epoch, &def.runtime_env(&a.provenance.version, a.provenance.arch)?)
            .with_context(|| format!("cannot plan the {} image", a.provenance.arch))?;
        versions.insert(plan.version.clone());
        let built = if args.force {
            let inputs = plan.inputs()?;
            let stamp = bake::write_image(&plan, &out, inputs)?;
            let (layout, archive) = (out.join(&plan.stem), out.join(format!("{}.tar", plan.stem)));
            Built { stamp, arch: Some(plan.arch), layout, archive, up_to_date: false }
        } else {
            bake::build(&plan, &out)?
        };
        print_built(&built);
        builds.push(built);
    }
    if builds.len() > 1 {
        if versions.len() > 1 {
            bail!(
                "the architectures carry different etcd versions ({}); a multi-arch image needs one: fetch the same version for each",
                versions.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let version = versions.into_iter().next().unwrap_or_default();
        let stem = format!("{}-{version}", bake::repo_stem(&spec.name));
        let reference = format!("{}:{version}", spec.name);
        let multi = bake::build_multi(&builds, &out, &stem, &reference, epoch)?;
        print_built(&multi);
        builds.push(multi);
    }
    Ok(builds)
}

/// `12.3 MiB`.
pub use crate::util::human_bytes as human;

fn print_built(b: &Built) {
    let what = match b.arch {
        Some(a) => format!("linux/{a}"),
        None => "multi-arch index".to_string(),
    };
    let state = if b.up_to_date { "up to date" } else { "built" };
    println!("{} ({what}): {state}", b.stamp.reference);
    println!("  digest  {}", b.stamp.digest);
    println!("  size    {} ({} bytes)", human(b.stamp.archive_size), b.stamp.archive_size);
    println!("  archive {}", display_rel(&b.archive));
    println!("  layout  {}/", display_rel(&b.layout));
}

fn print_verify(path: &Path, r: &verify::Report) {
    println!("ok: {} ({} blobs, {})", display_rel(path), r.blobs, human(r.bytes));
    for i in &r.images {
        println!(
            "  {} {} {} ({} layers)",
            i.ref_name.as_deref().unwrap_or("(no ref.name)"),
            i.platform,
            i.manifest,
            i.layers
        );
    }
    if !r.unreferenced.is_empty() {
        println!("  note: {} blob(s) referenced by nothing", r.unreferenced.len());
    }
}
