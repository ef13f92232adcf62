//! The build of one tree for each architecture, as upstream's `./build` does, into the layout
//! `fetch` writes, recorded by `acquire::finish`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{tail, Arch};

use super::*;

/// Everything the per-architecture builds share.
pub(super) struct BuildPlan<'a> {
    pub(super) go: &'a Go,
    pub(super) go_env: &'a GoEnv,
    pub(super) layout: &'a Layout,
    pub(super) tree: &'a Path,
    pub(super) gopath: Option<&'a Path>,
    pub(super) gocache: &'a Path,
    pub(super) short_sha: &'a str,
}

impl BuildPlan<'_> {
    /// Builds every target into `out` and returns the provenance details.
    pub(super) fn build(&self, arch: Arch, out: &Path) -> Result<BTreeMap<String, String>> {
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
    pub(super) fn check_gitsha(&self, arch: Arch, etcd: &Path) -> Result<()> {
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
pub(super) fn shell_words(args: &[String]) -> String {
    args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { a.clone() }).collect::<Vec<_>>().join(" ")
}

pub(super) fn combined(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}
