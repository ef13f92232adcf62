//! Acquire stage: the only stage that touches the network.
//! In: an image definition (version, arches, mirrors) and the pinned sums.
//! Out: `target/etcd/<version>/<arch>/{etcd,etcdctl[,etcdutl],provenance.json}`, verified, and the
//! verified artifacts themselves in `target/etcd/cache/`.
//!
//! Nothing unverified goes further: a tarball is checked against its pinned SHA-256 while it
//! streams, a `.deb` against apt's signed index. A mismatch is final; only an unreachable source
//! lets the next one be tried.
//!
//! Longer than 600 lines: the stage's entry point, the source policy, provenance and `finish`,
//! which every source ends in; the sources themselves are in `checksums.rs`, `download.rs` and
//! `distro.rs`.

pub mod checksums;
pub mod distro;
pub mod download;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::definition::{check_mirror_url, check_version, release_line, Definition};
use crate::image::elf;
use crate::util::{display_rel, target_dir, write_atomic, Arch, Sha256Hex, StagingDir};
use checksums::{tarball_name, PinnedSums};
use download::{download_verified, DownloadError, Timeouts};

/// The official download locations, tried after any mirror. Both use the layout
/// `<base>/v<version>/etcd-v<version>-linux-<arch>.tar.gz`.
pub const OFFICIAL_BASES: [&str; 2] =
    ["https://github.com/etcd-io/etcd/releases/download", "https://storage.googleapis.com/etcd"];

/// Environment variable with extra mirrors (separated by spaces or commas), tried after `--mirror`.
pub const MIRRORS_ENV: &str = "XTASK_ETCD_MIRRORS";
/// Environment variable that, when `1`, never contacts the official locations (air-gapped sites, tests).
pub const NO_OFFICIAL_ENV: &str = "XTASK_NO_OFFICIAL";

/// The binaries a release may carry, in the order they are listed.
const BINARIES: [&str; 3] = ["etcd", "etcdctl", "etcdutl"];

/// Acquire etcd for a version and architecture, verified against pinned SHA-256 sums.
///
/// Sources are tried in order: `--mirror` URLs, $XTASK_ETCD_MIRRORS, the definition's mirrors,
/// then the official GitHub and Google storage locations. A checksum mismatch stops everything;
/// an unreachable source moves on to the next one. A verified download is cached under
/// target/etcd/cache/ and never fetched again.
#[derive(Debug, clap::Args)]
pub struct Fetch {
    /// etcd version to fetch (default: the image definition's etcd.version)
    #[arg(long, value_name = "V")]
    pub etcd_version: Option<String>,
    /// Architecture(s) to fetch: amd64, arm64, ppc64le, s390x (default: the definition's etcd.arches)
    #[arg(long = "arch", value_name = "A")]
    pub arches: Vec<Arch>,
    /// Base URL (http, https or file) under which v<V>/etcd-v<V>-linux-<A>.tar.gz lives; repeatable
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
    /// Pinned sums file in sha256sum format, instead of the definition's
    #[arg(long, value_name = "FILE")]
    pub checksums: Option<PathBuf>,
    /// Where etcd comes from: auto, release, debian, build, dir:PATH or tarball:PATH
    /// (auto falls back to debian only when every download location is unreachable and the
    /// definition allows it)
    #[arg(long, default_value_t = SourcePolicy::Auto, value_name = "SOURCE")]
    pub source: SourcePolicy,
    /// Never contact the official download locations, only the mirrors (also: XTASK_NO_OFFICIAL=1)
    #[arg(long)]
    pub no_official: bool,
    /// Image definition to read (default: images/etcd.toml)
    #[arg(long, value_name = "FILE")]
    pub definition: Option<PathBuf>,
    /// Output root instead of target/etcd
    #[arg(long, value_name = "DIR")]
    pub out_root: Option<PathBuf>,
}

impl Fetch {
    pub fn run(self) -> Result<()> {
        let def = match &self.definition {
            Some(p) => Definition::load(p)?,
            None => Definition::load_default()?,
        };
        let arches = if self.arches.is_empty() { def.etcd.arches.clone() } else { self.arches.clone() };
        let opts = AcquireOptions {
            version: self.etcd_version,
            mirrors: self.mirrors,
            checksums: self.checksums,
            source: self.source,
            no_official: self.no_official,
            out_root: self.out_root,
        };
        let mut versions = std::collections::BTreeSet::new();
        for arch in arches {
            let got = ensure(&def, arch, &opts)?;
            let p = &got.provenance;
            println!("etcd {} {} ({}) -> {}", p.version, p.arch, p.source.as_str(), display_rel(&got.dir));
            versions.insert(p.version.clone());
        }
        for v in versions {
            crate::advisories::warn_if_affected(&v)?;
        }
        Ok(())
    }
}

/// Where a set of etcd binaries came from: written as `provenance.json` beside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `tarball` (official location or a mirror), `distro` (Debian packages) or `build` (from source).
    pub source: SourceKind,
    /// The etcd version actually inside (for `distro`, the package's upstream version).
    pub version: String,
    pub arch: Arch,
    /// The URL the tarball came from, the package names and versions, or the git source.
    pub origin: String,
    /// SHA-256 of each verified artifact (tarball or .deb files), by file name.
    pub artifacts: BTreeMap<String, Sha256Hex>,
    /// SHA-256 of each binary in this directory.
    pub files: BTreeMap<String, Sha256Hex>,
    /// What `etcd --version` printed, when the architecture runs here.
    pub reported_version: Option<String>,
    /// Free-form notes (for builds: go version, flags, git sha).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl Provenance {
    /// Reads `provenance.json` of an acquisition directory (without re-checking the binaries:
    /// [`Acquired::open`] does that).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("provenance.json");
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("invalid provenance record {}", path.display()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Tarball,
    Distro,
    Build,
    /// Binaries taken from a directory on disk (`--source dir:PATH`): not verified against any pin.
    Dir,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Tarball => "tarball",
            SourceKind::Distro => "distro",
            SourceKind::Build => "build",
            SourceKind::Dir => "dir",
        }
    }
}

/// A verified set of etcd binaries on disk.
#[derive(Debug, Clone)]
pub struct Acquired {
    /// `target/etcd/<version>/<arch>/`
    pub dir: PathBuf,
    pub provenance: Provenance,
}

impl Acquired {
    pub fn binary(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A command that runs the binary `name` (etcd, etcdctl, etcdutl) on this machine: directly,
    /// or, when the acquisition carries its own C library (`sysroot/`: another Debian suite or
    /// architecture), through that library's ELF interpreter and library directories. Arguments
    /// go after it as usual. Fails when the architecture does not run here.
    pub fn command(&self, name: &str) -> Result<Command> {
        let arch = self.provenance.arch;
        if Arch::host() != Some(arch) {
            bail!("{} holds etcd for {arch}, which does not run on this machine", self.dir.display());
        }
        let binary = self.binary(name);
        if !binary.is_file() {
            bail!("{} has no {name}", self.dir.display());
        }
        let sysroot = self.dir.join("sysroot");
        if sysroot.is_dir() {
            elf::loader_command(&sysroot, &binary, arch)
        } else {
            Ok(Command::new(binary))
        }
    }

    /// Reads a directory written by this stage and re-checks every binary against its recorded sum.
    pub fn open(dir: &Path) -> Result<Self> {
        let provenance = Provenance::read(dir)?;
        for (name, sum) in &provenance.files {
            let actual = Sha256Hex::of_file(&dir.join(name))?;
            if actual != *sum {
                bail!("{}/{name} changed since it was verified (SHA-256 {actual}, recorded {sum})", dir.display());
            }
        }
        Ok(Acquired { dir: dir.to_path_buf(), provenance })
    }
}

/// Where etcd may come from (`--source`):
///
/// - `auto` (default): the cache, the mirrors, the official locations; only when every one of
///   them failed with a network error, and the definition allows it, Debian's packages.
/// - `release` (also `tarball`): the mirrors and official locations only, never a fallback.
/// - `debian` (also `distro`): Debian's etcd-server/etcd-client via `apt-get download`, from the
///   suite `etcd.debian_suites` assigns to the version's release line (another suite's C library
///   goes into `sysroot/` beside the binaries).
/// - `build`: what `cargo xtask build-etcd` produced.
/// - `dir:PATH`: binaries already on disk (`PATH/etcd`, `PATH/etcdctl`); provenance says so.
/// - `tarball:PATH`: a local release tarball, verified against the pins like a download.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourcePolicy {
    #[default]
    Auto,
    Release,
    Debian,
    Build,
    Dir(PathBuf),
    Tarball(PathBuf),
}

impl std::str::FromStr for SourcePolicy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let path = |p: &str| -> Result<PathBuf> {
            if p.is_empty() {
                bail!("--source {s}: give a path after the colon");
            }
            Ok(PathBuf::from(p))
        };
        Ok(match s {
            "auto" => SourcePolicy::Auto,
            "release" | "tarball" => SourcePolicy::Release,
            "debian" | "distro" => SourcePolicy::Debian,
            "build" => SourcePolicy::Build,
            _ => match s.split_once(':') {
                Some(("dir", p)) => SourcePolicy::Dir(path(p)?),
                Some(("tarball", p)) => SourcePolicy::Tarball(path(p)?),
                _ => bail!(
                    "unknown source {s:?}: use auto, release, debian, build, dir:PATH (binaries on disk) \
                     or tarball:PATH (a local release tarball)"
                ),
            },
        })
    }
}

impl std::fmt::Display for SourcePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourcePolicy::Auto => f.write_str("auto"),
            SourcePolicy::Release => f.write_str("release"),
            SourcePolicy::Debian => f.write_str("debian"),
            SourcePolicy::Build => f.write_str("build"),
            SourcePolicy::Dir(p) => write!(f, "dir:{}", p.display()),
            SourcePolicy::Tarball(p) => write!(f, "tarball:{}", p.display()),
        }
    }
}

/// How to acquire, beyond what the definition says.
#[derive(Debug, Clone, Default)]
pub struct AcquireOptions {
    pub version: Option<String>,
    pub mirrors: Vec<String>,
    pub checksums: Option<PathBuf>,
    pub source: SourcePolicy,
    pub no_official: bool,
    /// Output root instead of `target/etcd`.
    pub out_root: Option<PathBuf>,
}

/// Makes sure verified binaries for `arch` are on disk (downloading only when the cache
/// lacks them) and returns where they are.
pub fn ensure(def: &Definition, arch: Arch, opts: &AcquireOptions) -> Result<Acquired> {
    let version = opts.version.clone().unwrap_or_else(|| def.etcd.version.clone());
    check_version(&version).context("--etcd-version")?;
    let root = opts.out_root.clone().unwrap_or_else(|| target_dir().join("etcd"));
    let out_dir = root.join(&version).join(arch.as_str());
    match &opts.source {
        SourcePolicy::Build => {
            let got = Acquired::open(&out_dir).with_context(|| {
                format!("no source build of etcd {version} for {arch}: run `cargo xtask build-etcd` first")
            })?;
            if got.provenance.source != SourceKind::Build {
                bail!(
                    "{} holds a {} acquisition, not a source build",
                    out_dir.display(),
                    got.provenance.source.as_str()
                );
            }
            Ok(got)
        }
        SourcePolicy::Debian => ensure_distro(def, &version, arch, &root),
        SourcePolicy::Dir(dir) => ensure_dir(dir.as_path(), &version, arch, &root),
        SourcePolicy::Tarball(file) => {
            let pins = PinnedSums::load(&opts.checksums.clone().unwrap_or_else(|| def.checksums_path()))?;
            let name = tarball_name(&version, arch);
            let expected = pins.expect(&name)?;
            let file =
                fs::canonicalize(file).with_context(|| format!("--source tarball:{}: no such file", file.display()))?;
            let cached = root.join("cache").join(&name);
            if !cached_matches(&cached, expected)? {
                download_verified(&format!("file://{}", file.display()), &cached, expected, Timeouts::from_env()?)?;
            }
            install_tarball(&cached, &version, arch, expected, &format!("file:{}", file.display()), &out_dir)
        }
        SourcePolicy::Release | SourcePolicy::Auto => {
            let pins = PinnedSums::load(&opts.checksums.clone().unwrap_or_else(|| def.checksums_path()))?;
            let name = tarball_name(&version, arch);
            let expected = pins.expect(&name)?;
            // Already acquired and unchanged: no network at all.
            if let Ok(got) = Acquired::open(&out_dir) {
                if got.provenance.source == SourceKind::Tarball
                    && got.provenance.artifacts.get(&name) == Some(&expected)
                {
                    eprintln!("etcd {version} {arch}: up to date (verified by hash)");
                    return Ok(got);
                }
            }
            let cached = root.join("cache").join(&name);
            let marker = fallback_marker(&root, &version, arch);
            if opts.source == SourcePolicy::Auto && def.etcd.allow_distro_fallback && !cached.exists() {
                if let Some(got) = earlier_fallback(&marker, &root, &version, arch) {
                    eprintln!(
                        "WARNING: using Debian's etcd {} ({arch}) from an earlier fallback: no download location was \
                         reachable then. `cargo xtask fetch --source release` fetches the pinned {version} once it is.",
                        got.provenance.version
                    );
                    return Ok(got);
                }
            }
            let origin = match cached_matches(&cached, expected)? {
                true => format!("cache:{name}"),
                false => match download_first(&version, arch, &name, expected, &cached, def, opts)? {
                    Some(url) => url,
                    None if opts.source == SourcePolicy::Auto && def.etcd.allow_distro_fallback => {
                        eprintln!();
                        eprintln!("WARNING: no download location for etcd {version} ({arch}) was reachable.");
                        eprintln!(
                            "WARNING: falling back to Debian's etcd packages, as {} allows;",
                            display_rel(&def.path)
                        );
                        eprintln!("WARNING: the artifacts will carry the version actually shipped, not {version}.");
                        eprintln!();
                        let got = ensure_distro(def, &version, arch, &root)?;
                        write_atomic(&marker, format!("{}\n", got.provenance.version).as_bytes(), 0o644)?;
                        return Ok(got);
                    }
                    None => bail!(
                        "no download location for {name} was reachable (see above); add a reachable --mirror, \
                         or use --source debian"
                    ),
                },
            };
            let origin = match previous_origin(&out_dir) {
                Some(prev) if origin.starts_with("cache:") => prev,
                _ => origin,
            };
            let got = install_tarball(&cached, &version, arch, expected, &origin, &out_dir)?;
            if marker.exists() {
                fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
            }
            Ok(got)
        }
    }
}

/// Records that `auto` fell back to Debian's packages for a pinned version, so that later runs
/// reuse that choice without network I/O until a tarball is fetched.
fn fallback_marker(root: &Path, version: &str, arch: Arch) -> PathBuf {
    root.join(version).join(format!("{arch}.fallback"))
}

/// The Debian acquisition an earlier fallback for `requested` recorded, if it is still intact
/// and of the requested release line.
fn earlier_fallback(marker: &Path, root: &Path, requested: &str, arch: Arch) -> Option<Acquired> {
    let version = fs::read_to_string(marker).ok()?;
    let version = version.trim();
    check_version(version).ok()?;
    if release_line(version) != release_line(requested) {
        return None;
    }
    let got = Acquired::open(&root.join(version).join(arch.as_str())).ok()?;
    (got.provenance.source == SourceKind::Distro).then_some(got)
}

fn cached_matches(cached: &Path, expected: Sha256Hex) -> Result<bool> {
    if !cached.exists() {
        return Ok(false);
    }
    if Sha256Hex::of_file(cached)? == expected {
        return Ok(true);
    }
    eprintln!("warning: cached {} does not match its pinned sum; deleting it", cached.display());
    fs::remove_file(cached).with_context(|| format!("cannot remove {}", cached.display()))?;
    Ok(false)
}

/// The origin recorded by an earlier acquisition, so that a cache hit keeps naming the real URL.
fn previous_origin(out_dir: &Path) -> Option<String> {
    let prov = Provenance::read(out_dir).ok()?;
    (prov.source == SourceKind::Tarball).then_some(prov.origin)
}

/// The download locations, in the order they are tried.
pub fn sources(def: &Definition, opts: &AcquireOptions) -> Result<Vec<String>> {
    let mut bases: Vec<String> = opts.mirrors.clone();
    if let Ok(env) = std::env::var(MIRRORS_ENV) {
        bases.extend(env.split([' ', ',', '\n']).filter(|s| !s.is_empty()).map(str::to_string));
    }
    bases.extend(def.etcd.mirrors.iter().cloned());
    for b in &bases {
        check_mirror_url(b)?;
    }
    let no_official = opts.no_official || std::env::var(NO_OFFICIAL_ENV).is_ok_and(|v| v == "1");
    if !no_official {
        bases.extend(OFFICIAL_BASES.iter().map(|s| s.to_string()));
    }
    Ok(bases)
}

/// Tries each source in turn. Ok(Some(url)) when one delivered the verified file,
/// Ok(None) when none was reachable, Err on a mismatch (final) or a local failure.
fn download_first(
    version: &str,
    arch: Arch,
    name: &str,
    expected: Sha256Hex,
    dest: &Path,
    def: &Definition,
    opts: &AcquireOptions,
) -> Result<Option<String>> {
    let timeouts = Timeouts::from_env()?;
    let bases = sources(def, opts)?;
    if bases.is_empty() {
        eprintln!("no download location configured (official locations disabled, no mirror given)");
    }
    for base in bases {
        let url = format!("{}/v{version}/{name}", base.trim_end_matches('/'));
        match download_verified(&url, dest, expected, timeouts) {
            Ok(()) => {
                eprintln!("verified {name}: sha256 {expected}");
                return Ok(Some(url));
            }
            Err(err @ DownloadError::Mismatch { .. }) => return Err(err.into()),
            Err(err) => eprintln!("unavailable, trying the next source: {err}"),
        }
    }
    let _ = arch;
    Ok(None)
}

/// Extracts the binaries of a verified tarball into a staging directory, checks them, writes
/// the provenance, and moves the whole into `out_dir`.
fn install_tarball(
    tarball: &Path,
    version: &str,
    arch: Arch,
    sum: Sha256Hex,
    origin: &str,
    out_dir: &Path,
) -> Result<Acquired> {
    let staging = StagingDir::beside(out_dir)?;
    let file = fs::File::open(tarball).with_context(|| format!("cannot open {}", tarball.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let top = format!("etcd-v{version}-linux-{arch}");
    for entry in archive.entries().with_context(|| format!("cannot read {}", tarball.display()))? {
        let mut entry = entry.with_context(|| format!("corrupt archive {}", tarball.display()))?;
        let path = entry.path().context("bad path in archive")?.into_owned();
        let Ok(rel) = path.strip_prefix(&top) else { continue };
        let Some(name) = rel.to_str().filter(|n| BINARIES.contains(n)) else { continue };
        if !entry.header().entry_type().is_file() {
            bail!("{}: {} is not a regular file", tarball.display(), path.display());
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read {} from {}", path.display(), tarball.display()))?;
        write_atomic(&staging.path().join(name), &data, 0o755)?;
    }
    if !staging.path().join("etcd").exists() || !staging.path().join("etcdctl").exists() {
        bail!("{} lacks {top}/etcd or {top}/etcdctl: not an etcd release tarball", tarball.display());
    }
    let provenance = Provenance {
        source: SourceKind::Tarball,
        version: version.to_string(),
        arch,
        origin: origin.to_string(),
        artifacts: BTreeMap::from([(tarball_name(version, arch), sum)]),
        files: BTreeMap::new(),
        reported_version: None,
        details: BTreeMap::new(),
    };
    finish(staging, provenance, out_dir)
}

/// Binaries already on disk (`--source dir:PATH`), into `<root>/<version>/<arch>`. The version is
/// the one `etcd --version` reports where the architecture runs here, else the requested one.
/// Nothing vouches for them but the operator: the provenance says `dir` and names the path.
fn ensure_dir(dir: &Path, requested: &str, arch: Arch, root: &Path) -> Result<Acquired> {
    let dir = fs::canonicalize(dir).with_context(|| format!("--source dir:{}: no such directory", dir.display()))?;
    let mut sums = BTreeMap::new();
    for name in BINARIES {
        let path = dir.join(name);
        if path.is_file() {
            sums.insert(name.to_string(), Sha256Hex::of_file(&path)?);
        } else if name != "etcdutl" {
            bail!("--source dir:{}: {name} is missing; the directory must hold etcd and etcdctl", dir.display());
        }
    }
    let version = if Arch::host() == Some(arch) {
        reported_version(&dir.join("etcd"))?
    } else {
        eprintln!("note: {arch} binaries do not run here; recording the requested version {requested}");
        requested.to_string()
    };
    let out_dir = root.join(&version).join(arch.as_str());
    if let Ok(got) = Acquired::open(&out_dir) {
        if got.provenance.source == SourceKind::Dir && got.provenance.artifacts == sums {
            eprintln!("etcd {version} {arch} (from {}): up to date (verified by hash)", dir.display());
            return Ok(got);
        }
    }
    let staging = StagingDir::beside(&out_dir)?;
    for name in sums.keys() {
        let data = fs::read(dir.join(name)).with_context(|| format!("cannot read {}/{name}", dir.display()))?;
        write_atomic(&staging.path().join(name), &data, 0o755)?;
    }
    let provenance = Provenance {
        source: SourceKind::Dir,
        version,
        arch,
        origin: format!("dir:{}", dir.display()),
        artifacts: sums,
        files: BTreeMap::new(),
        reported_version: None,
        details: BTreeMap::new(),
    };
    finish(staging, provenance, &out_dir)
}

/// Debian's packages of `requested`'s release line, from the suite `etcd.debian_suites` assigns
/// to it, into `<root>/<upstream version>/<arch>`. A package of another release line is refused:
/// a 3.4 request never gets 3.5, nor the other way round.
fn ensure_distro(def: &Definition, requested: &str, arch: Arch, root: &Path) -> Result<Acquired> {
    let cache = root.join("cache");
    let suite = def.debian_suite(requested)?;
    // Resolve the candidate first (no network once the lists exist): an unchanged acquisition
    // is reused as is.
    let apt = distro::Apt::new(arch, &suite, root)?;
    let server = distro::candidate(&apt, "etcd-server")?;
    let version = distro::upstream_version(&server.version);
    check_version(&version)
        .with_context(|| format!("{} ships etcd-server {}, not an etcd release", apt.describe(), server.version))?;
    let line = release_line(requested);
    if release_line(&version) != line {
        bail!(
            "{} ships etcd {version} (etcd-server {}), not a {line}.x release as etcd {requested} needs: \
             set etcd.debian_suites.\"{line}\" in {} to a Debian suite whose etcd-server is {line}.x",
            apt.describe(),
            server.version,
            def.path.display()
        );
    }
    if version != requested {
        eprintln!("note: Debian's {} offers etcd {version} of the {line} line, not {requested}", apt.describe());
    }
    let out_dir = root.join(&version).join(arch.as_str());
    if let Ok(got) = Acquired::open(&out_dir) {
        if got.provenance.source == SourceKind::Distro
            && got.provenance.artifacts.get(&server.file_name) == Some(&server.sha256)
        {
            eprintln!("etcd {version} {arch} (Debian): up to date (verified by hash)");
            return Ok(got);
        }
    }
    let staging = StagingDir::beside(&out_dir)?;
    let (version, origin, artifacts) = distro::acquire_into(&apt, &cache, staging.path())?;
    let provenance = Provenance {
        source: SourceKind::Distro,
        version,
        arch,
        origin,
        artifacts,
        files: BTreeMap::new(),
        reported_version: None,
        details: BTreeMap::new(),
    };
    finish(staging, provenance, &out_dir)
}

/// Checks the staged binaries (architecture, reported version), records their sums and the
/// provenance, and moves the directory into place. Every source ends here, `build-etcd` too.
pub fn finish(staging: StagingDir, mut provenance: Provenance, out_dir: &Path) -> Result<Acquired> {
    let arch = provenance.arch;
    for name in BINARIES {
        let path = staging.path().join(name);
        if !path.exists() {
            continue;
        }
        check_elf_arch(&path, arch)?;
        provenance.files.insert(name.to_string(), Sha256Hex::of_file(&path)?);
    }
    let sysroot = staging.path().join("sysroot");
    if sysroot.is_dir() {
        for (rel, sum) in hash_tree(&sysroot)? {
            provenance.files.insert(format!("sysroot/{rel}"), sum);
        }
    }
    if Arch::host() == Some(arch) {
        let etcd = staging.path().join("etcd");
        let reported = if sysroot.is_dir() {
            reported_version_with(&mut elf::loader_command(&sysroot, &etcd, arch)?, &etcd)?
        } else {
            reported_version(&etcd)?
        };
        if reported != provenance.version {
            bail!(
                "the etcd binary from {} reports version {reported}, not {}; refusing it",
                provenance.origin,
                provenance.version
            );
        }
        provenance.reported_version = Some(reported);
    }
    let json = serde_json::to_string_pretty(&provenance).context("cannot serialise provenance")?;
    write_atomic(&staging.path().join("provenance.json"), format!("{json}\n").as_bytes(), 0o644)?;
    staging.commit(out_dir)?;
    Ok(Acquired { dir: out_dir.to_path_buf(), provenance })
}

/// SHA-256 of every regular file under `dir`, by relative path (symlinks are not followed).
fn hash_tree(dir: &Path) -> Result<BTreeMap<String, Sha256Hex>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(dir).map(|p| p.display().to_string()).unwrap_or_default();
                out.insert(rel, Sha256Hex::of_file(&e.path())?);
            }
        }
    }
    Ok(out)
}

/// Reads the ELF header and checks the machine type against `arch`.
pub fn check_elf_arch(path: &Path, arch: Arch) -> Result<()> {
    let mut head = [0u8; 20];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("cannot read the header of {}", path.display()))?;
    if &head[..4] != b"\x7fELF" {
        bail!("{} is not an ELF executable", path.display());
    }
    let machine =
        if head[5] == 2 { u16::from_be_bytes([head[18], head[19]]) } else { u16::from_le_bytes([head[18], head[19]]) };
    if machine != arch.elf_machine() {
        bail!("{} is not a {arch} binary (ELF machine {machine})", path.display());
    }
    Ok(())
}

/// Runs `etcd --version` and returns the version it reports.
pub fn reported_version(etcd: &Path) -> Result<String> {
    reported_version_with(&mut Command::new(etcd), etcd)
}

/// Runs `cmd --version` (`cmd` runs `etcd`, directly or through a sysroot's ELF interpreter)
/// and returns the version it reports.
fn reported_version_with(cmd: &mut Command, etcd: &Path) -> Result<String> {
    let out = cmd
        .arg("--version")
        .env_clear()
        .output()
        .with_context(|| format!("cannot run {} --version", etcd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} --version failed ({}): {}", etcd.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:").map(|v| v.trim().to_string()))
        .with_context(|| format!("{} --version printed no 'etcd Version:' line: {text:?}", etcd.display()))
}
