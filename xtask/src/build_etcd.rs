//! Build stage: etcd from source with Go (`cargo xtask build-etcd`).
//! In: a git repository (URL or local path) and a ref, a `go` command, the image definition
//! (default ref `v<etcd.version>`, expected Go line `etcd.go_version`), and the pass-through
//! environment GOPROXY / GOFLAGS / GOCACHE.
//! Out: `target/etcd/<version>/<arch>/{etcd,etcdctl[,etcdutl],provenance.json}`, the layout
//! `fetch` writes, recorded by [`acquire::finish`] with `source = "build"`, so that
//! `--source build` hands it to `image` and `portable` unchanged. Intermediate state:
//! `target/etcd-src/` (bare git caches, kept), `target/etcd-build/<commit>/` (the checked-out
//! tree, removed when done) and `target/etcd-build/go-cache/` (Go's build cache, kept).
//!
//! The build is upstream's `./build`: CGO_ENABLED=0, `-ldflags "-s -X <version pkg>.GitSHA=<sha>"`,
//! plus `-trimpath` when the Go has it. A tree with `vendor/` but no `vendor/modules.txt` (the 3.4
//! line) builds in GOPATH mode without any network; module trees use their `vendor/` when it has
//! a `modules.txt` and GOPROXY otherwise. Same commit + same Go + same flags = same bytes; the
//! official release tarball's sums are never reproduced (upstream used its own Go and tooling).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::acquire::{finish, Acquired, Provenance, SourceKind};
use crate::definition::{check_version, Definition};
use crate::util::{display_rel, tail, target_dir, Arch, Sha256Hex, StagingDir};

/// Length of the GitSHA stamped into the binaries. Fixed, so that it does not depend on how
/// many objects the local clone holds (git's default abbreviation grows with the repository).
const SHORT_SHA_LEN: usize = 9;

/// Lines of Go's output quoted when a build fails.
const FAILURE_TAIL_LINES: usize = 25;

/// Build etcd (and etcdctl, etcdutl when the tree has it) from a git tree with Go, as upstream's
/// `./build` does, into the same layout `fetch` writes (use it with `--source build`).
///
/// GOPROXY and GOFLAGS pass through to Go: on a network that cannot reach the default module
/// proxy, use a mirror, e.g. `GOPROXY=https://goproxy.cn,direct cargo xtask build-etcd ...`.
/// etcd 3.4 trees (vendor/ without modules.txt) need no network at all. GOCACHE is
/// target/etcd-build/go-cache unless set. A source build never has the official tarball's sums.
#[derive(Debug, clap::Args)]
pub struct BuildEtcd {
    /// Git repository: a URL or a local path (work tree or bare); fetched into target/etcd-src/
    #[arg(long = "git", value_name = "URL_OR_PATH")]
    pub git: String,
    /// Tag, branch or commit to build (default: v<etcd.version> of the image definition)
    #[arg(long = "ref", value_name = "TAG_OR_COMMIT")]
    pub git_ref: Option<String>,
    /// The go command to build with
    #[arg(long, value_name = "PATH", default_value = "go")]
    pub go: PathBuf,
    /// Architecture(s) to build for: amd64, arm64, ppc64le, s390x (default: this machine's)
    #[arg(long = "arch", value_name = "A")]
    pub arches: Vec<Arch>,
    /// Image definition to read (default: images/etcd.toml)
    #[arg(long, value_name = "FILE")]
    pub definition: Option<PathBuf>,
    /// Output root instead of target/etcd
    #[arg(long, value_name = "DIR")]
    pub out_root: Option<PathBuf>,
    /// Rebuild even when the output already holds a build of the same commit with the same Go
    #[arg(long)]
    pub force: bool,
}

impl BuildEtcd {
    pub fn run(self) -> Result<()> {
        let def = match &self.definition {
            Some(p) => Definition::load(p)?,
            None => Definition::load_default()?,
        };
        let arches = match self.arches.is_empty() {
            false => self.arches.clone(),
            true => vec![Arch::host().context(
                "this machine's architecture is not one etcd is published for: pass --arch amd64|arm64|ppc64le|s390x",
            )?],
        };
        let go = Go::probe(&self.go)?;
        println!("Go: {} (from {})", go.raw, self.go.display());
        warn_about_go_line(&def, &go);
        println!(
            "note: a source build never reproduces the official release tarball's SHA-256 sums (upstream builds \
             its releases with its own Go: 1.12.17 for 3.4.9); it reproduces itself: one commit built with one Go \
             gives the same bytes"
        );

        let git_ref = self.git_ref.clone().unwrap_or_else(|| format!("v{}", def.etcd.version));
        let repo = GitCache::update(&self.git)?;
        let commit = repo.resolve(&git_ref)?;
        let short = repo.short_sha(&commit)?;
        println!("source: {} {git_ref} = {commit}", self.git);
        let out_root = self.out_root.clone().unwrap_or_else(|| target_dir().join("etcd"));
        let arches: Vec<Arch> = arches
            .into_iter()
            .filter(|arch| self.force || !up_to_date(&out_root, *arch, &commit, &go, &repo.source))
            .collect();
        if arches.is_empty() {
            return Ok(());
        }

        let build_root = target_dir().join("etcd-build");
        let work = WorkDir::fresh(&build_root.join(commit.get(..12).unwrap_or(&commit)))?;
        let tree = work.path().join("tree");
        repo.extract(&commit, &tree)?;
        let layout = Layout::detect(&tree).with_context(|| format!("{} at {commit} is not an etcd tree", self.git))?;
        check_version(&layout.version)
            .with_context(|| format!("{} in {} at {commit}", layout.version_file, self.git))?;
        if layout.version != def.etcd.version {
            println!(
                "note: this tree is etcd {}, the image definition ships {}: use it with `--etcd-version {}`",
                layout.version, def.etcd.version, layout.version
            );
        }
        go.check_for(&layout)?;
        let go_env = go.env()?;

        // GOPATH mode needs the tree at its import path inside a GOPATH.
        let (gopath, tree) = match layout.mode {
            Mode::Gopath => {
                let gopath = work.path().join("gopath");
                let dest = gopath.join("src").join(&layout.root_module);
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
                }
                fs::rename(&tree, &dest).with_context(|| format!("cannot move the tree into {}", dest.display()))?;
                (Some(gopath), dest)
            }
            Mode::Module => (None, tree),
        };
        let gocache = match std::env::var_os("GOCACHE").filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => build_root.join("go-cache"),
        };
        let plan = BuildPlan {
            go: &go,
            go_env: &go_env,
            layout: &layout,
            tree: &tree,
            gopath: gopath.as_deref(),
            gocache: &gocache,
            short_sha: &short,
        };
        for arch in arches {
            let out_dir = out_root.join(&layout.version).join(arch.as_str());
            let staging = StagingDir::beside(&out_dir)?;
            let mut details = plan.build(arch, staging.path())?;
            details.insert("git_url".into(), repo.source.clone());
            details.insert("git_ref".into(), git_ref.clone());
            details.insert("git_sha".into(), commit.clone());
            let provenance = Provenance {
                source: SourceKind::Build,
                version: layout.version.clone(),
                arch,
                origin: format!("git:{}@{commit}", repo.source),
                artifacts: BTreeMap::new(),
                files: BTreeMap::new(),
                reported_version: None,
                details,
            };
            let got: Acquired = finish(staging, provenance, &out_dir)
                .with_context(|| format!("{} sets Version = {:?}", layout.version_file, layout.version))?;
            for (name, sum) in &got.provenance.files {
                println!("  {name}: sha256 {sum}");
            }
            println!("etcd {} {arch} (build) -> {}", layout.version, display_rel(&got.dir));
        }
        Ok(())
    }
}

/// True (and says so) when `<out_root>/<version>/<arch>` holds an intact build of `commit` from
/// the same source with the same Go: building again would give the same bytes.
fn up_to_date(out_root: &Path, arch: Arch, commit: &str, go: &Go, source: &str) -> bool {
    let Ok(versions) = fs::read_dir(out_root) else { return false };
    for dir in versions.flatten().map(|e| e.path().join(arch.as_str())) {
        let Ok(got) = crate::acquire::Acquired::open(&dir) else { continue };
        let d = &got.provenance.details;
        let same = got.provenance.source == SourceKind::Build
            && d.get("git_sha").map(String::as_str) == Some(commit)
            && d.get("go_version") == Some(&go.raw)
            && d.get("git_url").map(String::as_str) == Some(source);
        if same {
            println!(
                "etcd {} {arch} (build of {}) is up to date in {}: nothing to do (--force rebuilds)",
                got.provenance.version,
                commit.get(..12).unwrap_or(commit),
                display_rel(&dir)
            );
            return true;
        }
    }
    false
}

/// Warns when the Go differs from the release line the image definition names.
fn warn_about_go_line(def: &Definition, go: &Go) {
    let Some(want) = &def.etcd.go_version else { return };
    let Some(want_v) = GoVersion::parse(want) else {
        eprintln!("warning: etcd.go_version {want:?} in {} is not a Go version like \"1.14\"", display_rel(&def.path));
        return;
    };
    let same = match want.matches('.').count() {
        1 => (want_v.major, want_v.minor) == (go.version.major, go.version.minor),
        _ => want_v == go.version,
    };
    if !same {
        eprintln!(
            "warning: {} (etcd.go_version) expects Go {want}{} for etcd {}, this is {}: the build works, \
             but its binaries differ from a Go {want} build; pass --go to use another Go",
            display_rel(&def.path),
            if want.matches('.').count() == 1 { ".x" } else { "" },
            def.etcd.version,
            go.raw,
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Go

/// A Go release: `1.19.8`, `1.14` (patch 0), `1.21rc2` (pre-releases count as their release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct GoVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

impl GoVersion {
    fn parse(s: &str) -> Option<GoVersion> {
        let s = s.trim().trim_start_matches("go");
        let mut nums = [0u32; 3];
        let mut count = 0;
        for (i, part) in s.split('.').take(3).enumerate() {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() {
                break;
            }
            nums[i] = digits.parse().ok()?;
            count = i + 1;
            if digits.len() != part.len() {
                break;
            }
        }
        (count >= 2).then_some(GoVersion { major: nums[0], minor: nums[1], patch: nums[2] })
    }

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The `go` command and what `go version` says about it.
struct Go {
    cmd: PathBuf,
    /// `go1.19.8`, as printed.
    raw: String,
    version: GoVersion,
}

/// What `go env` reports, read once; the build passes these on.
struct GoEnv {
    goflags: String,
    goproxy: String,
}

impl Go {
    fn probe(cmd: &Path) -> Result<Go> {
        // A relative path with a slash must not be re-resolved against the build directory.
        let cmd = match cmd.components().count() > 1 && cmd.is_relative() {
            true => std::env::current_dir().context("cannot read the current directory")?.join(cmd),
            false => cmd.to_path_buf(),
        };
        let out = Command::new(&cmd).arg("version").stdin(Stdio::null()).output().map_err(|err| {
            anyhow::anyhow!(
                "cannot run Go ({}): {err}; install Go (Debian: apt-get install golang-go) or pass --go PATH",
                cmd.display()
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("`{} version` failed ({}): {}", cmd.display(), out.status, tail(&combined(&out), 5));
        }
        let (raw, version) = parse_go_version_output(&text).with_context(|| {
            format!(
                "`{} version` printed {:?}, not `go version goX.Y...`: is --go really Go?",
                cmd.display(),
                text.trim()
            )
        })?;
        Ok(Go { cmd, raw, version })
    }

    /// Refuses a Go older than the tree asks for (`go` directives, GOPATH/module minimums).
    fn check_for(&self, layout: &Layout) -> Result<()> {
        let (floor, why) = match layout.mode {
            // Vendor directories in GOPATH mode: Go 1.6.
            Mode::Gopath => (GoVersion { major: 1, minor: 6, patch: 0 }, "GOPATH mode with vendor/".to_string()),
            Mode::Module => (GoVersion { major: 1, minor: 11, patch: 0 }, "Go modules".to_string()),
        };
        let (need, why) = match &layout.go_directive {
            Some((v, file)) if *v > floor => (*v, format!("{file} says `go {}.{}`", v.major, v.minor)),
            _ => (floor, why),
        };
        if self.version < need {
            bail!(
                "{} is too old for this tree: {why}, which needs Go {}.{} or newer; install a newer Go and pass --go PATH",
                self.raw,
                need.major,
                need.minor
            );
        }
        Ok(())
    }

    fn env(&self) -> Result<GoEnv> {
        let out = Command::new(&self.cmd)
            .args(["env", "GOFLAGS", "GOPROXY"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {} env", self.cmd.display()))?;
        if !out.status.success() {
            bail!("`go env` failed ({}): {}; check GOFLAGS and the go env file", out.status, tail(&combined(&out), 5));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        Ok(GoEnv {
            goflags: lines.next().unwrap_or("").trim().to_string(),
            goproxy: lines.next().unwrap_or("").trim().to_string(),
        })
    }
}

/// `go version go1.19.8 linux/amd64` (or `go version devel go1.22-abc ...`) -> ("go1.19.8", 1.19.8).
fn parse_go_version_output(text: &str) -> Option<(String, GoVersion)> {
    let line = text.lines().find(|l| l.starts_with("go version "))?;
    let word = line.split_whitespace().skip(2).find(|w| w.starts_with("go1") || w.starts_with("go2"))?;
    let word = word.split('-').next().unwrap_or(word);
    Some((word.to_string(), GoVersion::parse(word)?))
}

/// GOFLAGS without the module-only flags, which GOPATH mode rejects.
fn strip_module_flags(goflags: &str) -> (String, Vec<String>) {
    let (keep, dropped): (Vec<&str>, Vec<&str>) = goflags.split_whitespace().partition(|f| {
        !["-mod", "--mod", "-modfile", "--modfile", "-modcacherw", "--modcacherw"]
            .contains(&f.split('=').next().unwrap_or(f))
    });
    (keep.join(" "), dropped.into_iter().map(str::to_string).collect())
}

// ------------------------------------------------------------------------------------------------
// Git

/// A bare clone under `target/etcd-src/`, refreshed from the source on every run.
struct GitCache {
    dir: PathBuf,
    /// The URL, or the absolute path of a local repository: what the provenance names.
    source: String,
}

impl GitCache {
    fn update(source: &str) -> Result<GitCache> {
        let local = Path::new(source);
        let url: OsString = if local.exists() {
            fs::canonicalize(local).with_context(|| format!("cannot resolve --git {source}"))?.into_os_string()
        } else if source.contains("://") || source.split_once(':').is_some_and(|(host, _)| !host.contains('/')) {
            source.into()
        } else {
            bail!("--git {source}: no such directory, and not a URL (https://..., ssh://..., git@host:path)");
        };
        let key = Sha256Hex::of_bytes(url.as_encoded_bytes()).to_string();
        let stem: String = source
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .rsplit(['/', ':'])
            .next()
            .unwrap_or("repo")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        let root = target_dir().join("etcd-src");
        let dir = root.join(format!("{stem}-{}.git", &key[..12]));
        let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
        // `--update-shallow`: a shallow source (`git clone --depth 1`, the way many users fetch
        // etcd) has its tag at a shallow root, which a plain fetch rejects with only a warning.
        let fetch_args = ["fetch", "--quiet", "--force", "--no-tags", "--update-shallow"];
        if dir.exists() {
            let fetched = git(&dir, |c| {
                c.args(fetch_args).arg(&url).args(refspecs);
            });
            if let Err(err) = fetched {
                eprintln!(
                    "warning: cannot refresh {} from {source}, building from what it already holds: {err:#}",
                    display_rel(&dir)
                );
            }
            return Ok(GitCache { dir, source: url.to_string_lossy().into_owned() });
        }
        let staging = StagingDir::beside(&dir)?;
        git(staging.path(), |c| {
            c.args(["init", "--bare", "--quiet"]);
        })?;
        git(staging.path(), |c| {
            c.args(fetch_args).arg(&url).args(refspecs);
        })
        .with_context(|| format!("cannot fetch {source}: check the URL or path and that git can reach it"))?;
        staging.commit(&dir)?;
        Ok(GitCache { dir, source: url.to_string_lossy().into_owned() })
    }

    /// The full commit id `git_ref` names; "not found" lists the tags that exist.
    fn resolve(&self, git_ref: &str) -> Result<String> {
        if git_ref.starts_with('-') {
            bail!("--ref {git_ref:?} is not a tag, branch or commit");
        }
        if let Ok(sha) = git(&self.dir, |c| {
            c.args(["rev-parse", "--verify", "--quiet", "--end-of-options"]).arg(format!("{git_ref}^{{commit}}"));
        }) {
            return Ok(sha.trim().to_string());
        }
        let tags = git(&self.dir, |c| {
            c.args(["tag", "--list", "--sort=-v:refname"]);
        })
        .unwrap_or_default();
        let tags: Vec<&str> = tags.lines().take(15).collect();
        let listing = match tags.is_empty() {
            true => "the repository has no tags".to_string(),
            false => format!("newest tags: {}", tags.join(", ")),
        };
        bail!("ref {git_ref:?} not found in the repository ({listing}); pass an existing tag, branch or commit with --ref")
    }

    fn short_sha(&self, commit: &str) -> Result<String> {
        let out = git(&self.dir, |c| {
            c.arg("rev-parse").arg(format!("--short={SHORT_SHA_LEN}")).arg(commit);
        })?;
        Ok(out.trim().to_string())
    }

    /// Writes the commit's tree (no `.git`) into `dest`.
    fn extract(&self, commit: &str, dest: &Path) -> Result<()> {
        fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(&self.dir)
            .args(["archive", "--format=tar", commit])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run git: install git")?;
        let stdout = child.stdout.take().context("git archive has no stdout")?;
        let unpacked = tar::Archive::new(stdout).unpack(dest);
        let out = child.wait_with_output().context("cannot wait for git archive")?;
        if !out.status.success() {
            bail!("git archive {commit} failed ({}): {}", out.status, tail(&combined(&out), 5));
        }
        unpacked.with_context(|| format!("cannot unpack {commit} into {}", dest.display()))
    }
}

/// Runs git against a (bare) repository and returns its stdout.
fn git(git_dir: &Path, args: impl FnOnce(&mut Command)) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir").arg(git_dir).env("GIT_TERMINAL_PROMPT", "0").stdin(Stdio::null());
    args(&mut cmd);
    crate::util::stdout_of(&mut cmd)
}

/// A directory that is emptied first and removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn fresh(path: &Path) -> Result<WorkDir> {
        if path.exists() {
            fs::remove_dir_all(path).with_context(|| format!("cannot clear {}", path.display()))?;
        }
        fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir(path.to_path_buf()))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------------------------------------------
// The tree

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `vendor/` without `vendor/modules.txt`: GO111MODULE=off, the tree at its import path.
    Gopath,
    /// Go modules: each main package built from its module's directory.
    Module,
}

/// One binary to build.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    name: &'static str,
    /// Directory (relative to the tree) to run `go build` in.
    dir: PathBuf,
    /// Package argument.
    package: String,
}

/// What the tree says about how to build it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// `Version = "..."` from the version package.
    version: String,
    /// `version/version.go` or `api/version/version.go`.
    version_file: String,
    /// Import path of the package holding GitSHA, e.g. `go.etcd.io/etcd/version`.
    version_pkg: String,
    /// Module path of the root go.mod (the GOPATH location in GOPATH mode).
    root_module: String,
    mode: Mode,
    targets: Vec<Target>,
    /// Highest `go` directive among the modules built, and where it came from.
    go_directive: Option<(GoVersion, String)>,
}

impl Layout {
    fn detect(tree: &Path) -> Result<Layout> {
        let version_file = ["version/version.go", "api/version/version.go"]
            .into_iter()
            .find(|f| fs::read_to_string(tree.join(f)).is_ok_and(|t| t.contains("GitSHA")))
            .context("neither version/version.go nor api/version/version.go declares GitSHA")?;
        let text =
            fs::read_to_string(tree.join(version_file)).with_context(|| format!("cannot read {version_file}"))?;
        let version = go_string_var(&text, "Version")
            .with_context(|| format!("{version_file} declares no `Version = \"...\"`"))?;
        let version_dir = Path::new(version_file).parent().unwrap_or(Path::new(""));
        let version_pkg = import_path(tree, version_dir)?;

        let root_gomod = read_gomod(tree, Path::new(""))?
            .context("the tree has no go.mod at its root: etcd before 3.4 (github.com/coreos/etcd) is not supported")?;
        let root_module = root_gomod.module.clone();
        let mode = match tree.join("vendor").is_dir() && !tree.join("vendor/modules.txt").exists() {
            true => Mode::Gopath,
            false => Mode::Module,
        };
        let targets = if tree.join("server/main.go").exists() && tree.join("server/go.mod").exists() {
            // 3.5+: each binary is its own module.
            ["server", "etcdctl", "etcdutl"]
                .into_iter()
                .zip(["etcd", "etcdctl", "etcdutl"])
                .filter(|(dir, name)| *name != "etcdutl" || tree.join(dir).join("main.go").exists())
                .map(|(dir, name)| Target { name, dir: PathBuf::from(dir), package: ".".into() })
                .collect::<Vec<_>>()
        } else {
            let pkg = |sub: &str| match (mode, sub) {
                (Mode::Gopath, "") => root_module.clone(),
                (Mode::Gopath, s) => format!("{root_module}/{s}"),
                (Mode::Module, "") => ".".to_string(),
                (Mode::Module, s) => format!("./{s}"),
            };
            let mut t = vec![Target { name: "etcd", dir: PathBuf::new(), package: pkg("") }];
            t.push(Target { name: "etcdctl", dir: PathBuf::new(), package: pkg("etcdctl") });
            if tree.join("etcdutl/main.go").exists() {
                t.push(Target { name: "etcdutl", dir: PathBuf::new(), package: pkg("etcdutl") });
            }
            t
        };
        if !tree.join("main.go").exists() && !tree.join("server/main.go").exists() {
            bail!("no main package for etcd: neither main.go nor server/main.go exists");
        }
        if !tree.join("etcdctl").is_dir() {
            bail!("no etcdctl/ directory");
        }
        let mut go_directive: Option<(GoVersion, String)> = None;
        let mut dirs: Vec<&Path> = targets.iter().map(|t| t.dir.as_path()).collect();
        dirs.push(Path::new(""));
        dirs.dedup();
        for dir in dirs {
            let Some(gomod) = read_gomod(tree, dir)? else { continue };
            if let Some(v) = gomod.go {
                if go_directive.as_ref().is_none_or(|(have, _)| v > *have) {
                    go_directive = Some((v, dir.join("go.mod").display().to_string()));
                }
            }
        }
        Ok(Layout {
            version,
            version_file: version_file.to_string(),
            version_pkg,
            root_module,
            mode,
            targets,
            go_directive,
        })
    }
}

/// The `module` and `go` lines of a go.mod.
struct GoMod {
    module: String,
    go: Option<GoVersion>,
}

fn read_gomod(tree: &Path, dir: &Path) -> Result<Option<GoMod>> {
    let path = tree.join(dir).join("go.mod");
    let Ok(text) = fs::read_to_string(&path) else { return Ok(None) };
    let mut module = None;
    let mut go = None;
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        if let Some(m) = line.strip_prefix("module ") {
            module = Some(m.trim().trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("go ") {
            go = GoVersion::parse(v);
        }
    }
    let module = module.with_context(|| format!("{} has no module line", dir.join("go.mod").display()))?;
    Ok(Some(GoMod { module, go }))
}

/// The import path of `dir` (relative to the tree): the nearest go.mod's module path plus the rest.
fn import_path(tree: &Path, dir: &Path) -> Result<String> {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if let Some(gomod) = read_gomod(tree, d)? {
            let rest = dir.strip_prefix(d).unwrap_or(Path::new(""));
            let rest = rest.to_string_lossy();
            return Ok(match rest.is_empty() {
                true => gomod.module,
                false => format!("{}/{rest}", gomod.module),
            });
        }
        cur = d.parent();
    }
    bail!("no go.mod at or above {}: cannot tell the import path of the version package", dir.display())
}

/// The value of `name = "..."` in Go source (inside `var (...)` or a `var` line).
fn go_string_var(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("var ").unwrap_or(line).trim_start();
        let rest = line.strip_prefix(name)?;
        let rest = rest.trim_start().strip_prefix('=')?.trim();
        let value = rest.strip_prefix('"')?;
        Some(value[..value.find('"')?].to_string())
    })
}

// ------------------------------------------------------------------------------------------------
// Building

/// Everything the per-architecture builds share.
struct BuildPlan<'a> {
    go: &'a Go,
    go_env: &'a GoEnv,
    layout: &'a Layout,
    tree: &'a Path,
    gopath: Option<&'a Path>,
    gocache: &'a Path,
    short_sha: &'a str,
}

impl BuildPlan<'_> {
    /// Builds every target into `out` and returns the provenance details.
    fn build(&self, arch: Arch, out: &Path) -> Result<BTreeMap<String, String>> {
        let go = self.go;
        let layout = self.layout;
        let ldflags = format!("-s -X {}.GitSHA={}", layout.version_pkg, self.short_sha);
        let mut flags: Vec<String> = Vec::new();
        let trimpath = if go.version.at_least(1, 13) {
            flags.push("-trimpath".into());
            "yes".to_string()
        } else {
            format!(
                "no: {} has no -trimpath (added in Go 1.13), so the binaries embed the build directory \
                 (target/etcd-build/<commit>/) and match only builds made in the same place",
                go.raw
            )
        };
        if go.version.at_least(1, 18) {
            // The tree is extracted without .git, but it sits inside the project's checkout:
            // without this, Go 1.18+ would stamp the project's VCS state into etcd.
            flags.push("-buildvcs=false".into());
        }
        flags.extend(["-installsuffix".into(), "cgo".into(), "-ldflags".into(), ldflags.clone()]);

        let (goflags, dropped) = match layout.mode {
            Mode::Gopath => strip_module_flags(&self.go_env.goflags),
            Mode::Module => (self.go_env.goflags.clone(), Vec::new()),
        };
        if !dropped.is_empty() {
            eprintln!("note: GOPATH mode ignores the module flags {} from GOFLAGS", dropped.join(" "));
        }
        let module_env = match layout.mode {
            Mode::Gopath => "off",
            Mode::Module => "on",
        };
        let mut env: Vec<(&str, String)> = vec![
            ("CGO_ENABLED", "0".into()),
            ("GOOS", "linux".into()),
            ("GOARCH", arch.as_str().into()),
            ("GO111MODULE", module_env.into()),
            ("GOFLAGS", goflags.clone()),
        ];
        // Code generation knobs that change the bytes when set: recorded, not changed.
        for knob in ["GOAMD64", "GOARM64", "GOPPC64", "GOEXPERIMENT"] {
            if let Ok(v) = std::env::var(knob) {
                if !v.is_empty() {
                    env.push((knob, v));
                }
            }
        }

        let mut deps = Vec::new();
        for target in &layout.targets {
            let dir = self.tree.join(&target.dir);
            let mut args = vec!["build".to_string()];
            args.extend(flags.iter().cloned());
            let dep = match layout.mode {
                Mode::Gopath => "vendor/ (GOPATH mode, no network)".to_string(),
                Mode::Module if dir.join("vendor/modules.txt").exists() => {
                    args.push("-mod=vendor".into());
                    "vendor/ (-mod=vendor)".to_string()
                }
                Mode::Module => format!("GOPROXY={}", self.go_env.goproxy),
            };
            deps.push(format!("{}: {dep}", target.name));
            let dest = out.join(target.name);
            println!("building {} for {arch}: go {} {}", target.name, shell_words(&args), target.package);
            let mut cmd = Command::new(&go.cmd);
            cmd.current_dir(&dir).args(&args).arg("-o").arg(&dest).arg(&target.package).stdin(Stdio::null());
            cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("GOCACHE", self.gocache)
                .env("GOTOOLCHAIN", "local")
                .env("GOWORK", "off");
            match self.gopath {
                Some(gopath) => cmd.env("GOPATH", gopath),
                None => &mut cmd,
            };
            let output = cmd.output().with_context(|| format!("cannot run {}", go.cmd.display()))?;
            let text = combined(&output);
            if !output.status.success() {
                let fetching =
                    ["dial tcp", "proxy.golang.org", "module lookup disabled", "cannot find module providing package"];
                let hint = match fetching.iter().any(|s| text.contains(s)) {
                    true => {
                        "\nhint: Go could not get the dependencies: set GOPROXY to a reachable mirror \
                             (e.g. GOPROXY=https://goproxy.cn,direct), or vendor them in the tree"
                    }
                    false => "",
                };
                bail!(
                    "go build of {} ({}) failed with {}; the last lines of Go's output:\n{}{hint}",
                    target.name,
                    target.package,
                    output.status,
                    tail(&text, FAILURE_TAIL_LINES)
                );
            }
            if !text.trim().is_empty() {
                eprintln!("{}", text.trim_end());
            }
            if !dest.exists() {
                bail!(
                    "go build of {} succeeded but wrote no {}: is {} a main package?",
                    target.name,
                    dest.display(),
                    target.package
                );
            }
        }
        self.check_gitsha(arch, &out.join("etcd"))?;

        let env_line = env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let build_flags = shell_words(&flags);
        let mode = match layout.mode {
            Mode::Gopath => "gopath: vendor/ without vendor/modules.txt, GO111MODULE=off",
            Mode::Module => "module",
        };
        Ok(BTreeMap::from([
            ("go_version".to_string(), go.raw.clone()),
            ("ldflags".to_string(), ldflags),
            ("build_flags".to_string(), build_flags),
            ("build_env".to_string(), env_line),
            ("trimpath".to_string(), trimpath),
            ("mode".to_string(), mode.to_string()),
            ("dependencies".to_string(), deps.join("; ")),
            ("version_package".to_string(), layout.version_pkg.clone()),
            ("git_sha_short".to_string(), self.short_sha.to_string()),
            (
                "reproducibility".to_string(),
                "same commit, Go and flags give the same bytes; not the official release tarball's sums".to_string(),
            ),
        ]))
    }

    /// `-X` with a wrong package path is silently ignored: check that the GitSHA reached etcd.
    fn check_gitsha(&self, arch: Arch, etcd: &Path) -> Result<()> {
        let wrong_pkg = || {
            format!(
                "the GitSHA did not reach {}: `-X {}.GitSHA={}` had no effect, so {} is not the package etcd reads \
                 its version from; this tree's layout is not supported",
                etcd.display(),
                self.layout.version_pkg,
                self.short_sha,
                self.layout.version_file
            )
        };
        if Arch::host() == Some(arch) {
            let out = Command::new(etcd)
                .arg("--version")
                .env_clear()
                .output()
                .with_context(|| format!("cannot run the built {} --version", etcd.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            match text.lines().find_map(|l| l.strip_prefix("Git SHA:")).map(str::trim) {
                Some(sha) if sha == self.short_sha => Ok(()),
                Some(sha) => bail!("{} (it reports Git SHA: {sha})", wrong_pkg()),
                None => {
                    eprintln!(
                        "warning: `etcd --version` prints no 'Git SHA:' line; cannot confirm the GitSHA reached it"
                    );
                    Ok(())
                }
            }
        } else {
            let data = fs::read(etcd).with_context(|| format!("cannot read {}", etcd.display()))?;
            match data.windows(self.short_sha.len()).any(|w| w == self.short_sha.as_bytes()) {
                true => Ok(()),
                false => bail!("{}", wrong_pkg()),
            }
        }
    }
}

/// Arguments as one would type them (for messages and the provenance, never for running).
fn shell_words(args: &[String]) -> String {
    args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { a.clone() }).collect::<Vec<_>>().join(" ")
}

fn combined(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_parse() {
        let v = |s| GoVersion::parse(s).unwrap();
        assert_eq!(v("1.19.8"), GoVersion { major: 1, minor: 19, patch: 8 });
        assert_eq!(v("go1.14"), GoVersion { major: 1, minor: 14, patch: 0 });
        assert_eq!(v("1.21rc2"), GoVersion { major: 1, minor: 21, patch: 0 });
        assert!(GoVersion::parse("devel").is_none());
        assert!(v("1.2") < v("1.12"));
        let (raw, ver) = parse_go_version_output("go version go1.19.8 linux/amd64\n").unwrap();
        assert_eq!((raw.as_str(), ver), ("go1.19.8", v("1.19.8")));
        let (raw, _) = parse_go_version_output("go version devel go1.22-3b0db84 Mon Jan 1 linux/amd64").unwrap();
        assert_eq!(raw, "go1.22");
        assert!(parse_go_version_output("Python 3.11").is_none());
    }

    #[test]
    fn go_source_and_goflags_parse() {
        let src = "package version\n\nvar (\n\tMinClusterVersion = \"3.0.0\"\n\tVersion           = \"3.4.9\"\n\
                   \tAPIVersion        = \"unknown\"\n\tGitSHA = \"Not provided (use ./build instead of go build)\"\n)\n";
        assert_eq!(go_string_var(src, "Version").as_deref(), Some("3.4.9"));
        assert_eq!(go_string_var(src, "GitSHA").as_deref(), Some("Not provided (use ./build instead of go build)"));
        assert_eq!(go_string_var("var Version = \"3.5.1\"\n", "Version").as_deref(), Some("3.5.1"));
        let (kept, dropped) = strip_module_flags("-mod=vendor -tags=x --modcacherw -v");
        assert_eq!(kept, "-tags=x -v");
        assert_eq!(dropped, ["-mod=vendor", "--modcacherw"]);
    }

    #[test]
    fn layouts_are_read_from_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let w = |p: &str, s: &str| {
            fs::create_dir_all(t.join(p).parent().unwrap()).unwrap();
            fs::write(t.join(p), s).unwrap();
        };
        // The 3.4 line.
        w("go.mod", "module go.etcd.io/etcd\n\ngo 1.12\n");
        w("main.go", "package main\n");
        w("etcdctl/main.go", "package main\n");
        w("version/version.go", "package version\nvar (\n\tVersion = \"3.4.9\"\n\tGitSHA = \"x\"\n)\n");
        w("vendor/x/x.go", "package x\n");
        let l = Layout::detect(t).unwrap();
        assert_eq!(
            (l.version.as_str(), l.version_pkg.as_str(), l.mode),
            ("3.4.9", "go.etcd.io/etcd/version", Mode::Gopath)
        );
        assert_eq!(l.targets[1].package, "go.etcd.io/etcd/etcdctl");
        assert_eq!(l.go_directive.as_ref().map(|(v, _)| *v), GoVersion::parse("1.12"));
        // `go mod vendor` (as the tutorial does) makes it a module tree.
        w("vendor/modules.txt", "# x\n");
        let l = Layout::detect(t).unwrap();
        assert_eq!((l.mode, l.targets[1].package.as_str()), (Mode::Module, "./etcdctl"));

        // The 3.5 line: api/version in its own module, one module per binary.
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let w = |p: &str, s: &str| {
            fs::create_dir_all(t.join(p).parent().unwrap()).unwrap();
            fs::write(t.join(p), s).unwrap();
        };
        w("go.mod", "module go.etcd.io/etcd/v3\n\ngo 1.16\n");
        w("api/go.mod", "module go.etcd.io/etcd/api/v3\n\ngo 1.16\n");
        w("api/version/version.go", "package version\nvar (\n\tVersion = \"3.5.1\"\n\tGitSHA = \"x\"\n)\n");
        w("server/go.mod", "module go.etcd.io/etcd/server/v3\n\ngo 1.17\n");
        w("server/main.go", "package main\n");
        w("etcdctl/go.mod", "module go.etcd.io/etcd/etcdctl/v3\n\ngo 1.16\n");
        w("etcdctl/main.go", "package main\n");
        w("etcdutl/go.mod", "module go.etcd.io/etcd/etcdutl/v3\n\ngo 1.16\n");
        w("etcdutl/main.go", "package main\n");
        let l = Layout::detect(t).unwrap();
        assert_eq!(
            (l.version.as_str(), l.version_pkg.as_str(), l.mode),
            ("3.5.1", "go.etcd.io/etcd/api/v3/version", Mode::Module)
        );
        let names: Vec<_> = l.targets.iter().map(|t| (t.name, t.dir.display().to_string())).collect();
        assert_eq!(names, [("etcd", "server".into()), ("etcdctl", "etcdctl".into()), ("etcdutl", "etcdutl".into())]);
        let (v, file) = l.go_directive.unwrap();
        assert_eq!((v, file.as_str()), (GoVersion::parse("1.17").unwrap(), "server/go.mod"));
    }
}
