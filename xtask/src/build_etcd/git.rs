//! The git source: a bare cache under `target/etcd-src/`, the ref resolved, the commit unpacked
//! with `git archive` into a work directory removed when done.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{display_rel, tail, target_dir, Sha256Hex, StagingDir};

use super::*;

/// A bare clone under `target/etcd-src/`, refreshed from the source on every run.
pub(super) struct GitCache {
    pub(super) dir: PathBuf,
    /// The URL, or the absolute path of a local repository: what the provenance names.
    pub(super) source: String,
}

impl GitCache {
    pub(super) fn update(source: &str) -> Result<GitCache> {
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
    pub(super) fn resolve(&self, git_ref: &str) -> Result<String> {
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

    pub(super) fn short_sha(&self, commit: &str) -> Result<String> {
        let out = git(&self.dir, |c| {
            c.arg("rev-parse").arg(format!("--short={SHORT_SHA_LEN}")).arg(commit);
        })?;
        Ok(out.trim().to_string())
    }

    /// Writes the commit's tree (no `.git`) into `dest`.
    pub(super) fn extract(&self, commit: &str, dest: &Path) -> Result<()> {
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
pub(super) fn git(git_dir: &Path, args: impl FnOnce(&mut Command)) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir").arg(git_dir).env("GIT_TERMINAL_PROMPT", "0").stdin(Stdio::null());
    args(&mut cmd);
    crate::util::stdout_of(&mut cmd)
}

/// A directory that is emptied first and removed when dropped.
pub(super) struct WorkDir(PathBuf);

impl WorkDir {
    pub(super) fn fresh(path: &Path) -> Result<WorkDir> {
        if path.exists() {
            fs::remove_dir_all(path).with_context(|| format!("cannot clear {}", path.display()))?;
        }
        fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir(path.to_path_buf()))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
