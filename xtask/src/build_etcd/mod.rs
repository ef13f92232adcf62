//! Build stage: etcd from source with Go (`cargo xtask build-etcd`).
//! In: a git repository (URL or local path) and a ref, a `go` command, the image definition
//! (default ref `v<etcd.version>`, expected Go line `etcd.go_version`), and the pass-through
//! environment GOPROXY / GOFLAGS / GOCACHE.
//! Out: `target/etcd/<version>/<arch>/{etcd,etcdctl[,etcdutl],provenance.json}`, the layout
//! `fetch` writes, recorded by [`crate::acquire::finish`] with `source = "build"`, so that
//! `--source build` hands it to `image` and `portable` unchanged. Intermediate state:
//! `target/etcd-src/` (bare git caches, kept), `target/etcd-build/<commit>/` (the checked-out
//! tree, removed when done) and `target/etcd-build/go-cache/` (Go's build cache, kept).
//!
//! The build is upstream's `./build`: CGO_ENABLED=0, `-ldflags "-s -X <version pkg>.GitSHA=<sha>"`,
//! plus `-trimpath` when the Go has it. A tree with `vendor/` but no `vendor/modules.txt` (the 3.4
//! line) builds in GOPATH mode without any network; module trees use their `vendor/` when it has
//! a `modules.txt` and GOPROXY otherwise. Same commit + same Go + same flags = same bytes; the
//! official release tarball's sums are never reproduced (upstream used its own Go and tooling).

mod build;
mod git;
mod go;
mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::acquire::{finish, Acquired, Provenance, SourceKind};
use crate::definition::{check_version, Definition};
use crate::util::{display_rel, target_dir, Arch, StagingDir};

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

use build::*;
use git::*;
use go::*;
use tree::*;

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

    /// Writes `text` to `path` under `root`, creating its parents.
    fn put(root: &Path, path: &str, text: &str) {
        fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        fs::write(root.join(path), text).unwrap();
    }

    #[test]
    fn layouts_are_read_from_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let w = |p: &str, s: &str| put(t, p, s);
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
        let w = |p: &str, s: &str| put(t, p, s);
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
