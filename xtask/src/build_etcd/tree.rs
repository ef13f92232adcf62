//! What the unpacked tree says about how to build it (`Layout::detect`): the version package
//! and its import path, `Version`, the main packages, GOPATH or module mode, the minimum Go.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// `vendor/` without `vendor/modules.txt`: GO111MODULE=off, the tree at its import path.
    Gopath,
    /// Go modules: each main package built from its module's directory.
    Module,
}

/// One binary to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) name: &'static str,
    /// Directory (relative to the tree) to run `go build` in.
    pub(super) dir: PathBuf,
    /// Package argument.
    pub(super) package: String,
}

/// What the tree says about how to build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// `Version = "..."` from the version package.
    pub(super) version: String,
    /// `version/version.go` or `api/version/version.go`.
    pub(super) version_file: String,
    /// Import path of the package holding GitSHA, e.g. `go.etcd.io/etcd/version`.
    pub(super) version_pkg: String,
    /// Module path of the root go.mod (the GOPATH location in GOPATH mode).
    pub(super) root_module: String,
    pub(super) mode: Mode,
    pub(super) targets: Vec<Target>,
    /// Highest `go` directive among the modules built, and where it came from.
    pub(super) go_directive: Option<(GoVersion, String)>,
}

impl Layout {
    pub(super) fn detect(tree: &Path) -> Result<Layout> {
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
pub(super) struct GoMod {
    pub(super) module: String,
    pub(super) go: Option<GoVersion>,
}

pub(super) fn read_gomod(tree: &Path, dir: &Path) -> Result<Option<GoMod>> {
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
pub(super) fn import_path(tree: &Path, dir: &Path) -> Result<String> {
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
pub(super) fn go_string_var(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("var ").unwrap_or(line).trim_start();
        let rest = line.strip_prefix(name)?;
        let rest = rest.trim_start().strip_prefix('=')?.trim();
        let value = rest.strip_prefix('"')?;
        Some(value[..value.find('"')?].to_string())
    })
}
