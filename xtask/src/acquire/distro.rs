//! Debian's etcd packages as a source: `etcd-server` and `etcd-client`, fetched with
//! `apt-get download` and checked against the SHA-256 in apt's signed indices.
//! In: an architecture. Out: the verified `.deb` files in the cache and their binaries.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{is_root, Arch, Sha256Hex};

/// The packages that carry etcd and etcdctl, and the binaries taken from each.
pub const PACKAGES: [(&str, &[&str]); 2] = [("etcd-server", &["etcd"]), ("etcd-client", &["etcdctl", "etcdutl"])];

/// How apt is invoked for one architecture. The host's own configuration serves the host's
/// architecture and any foreign one dpkg is configured for; any other gets a private apt state
/// under the output root (same sources, same keyring, nothing on the host changed).
#[derive(Debug, Clone)]
pub struct Apt {
    pub arch: Arch,
    opts: Vec<String>,
}

impl Apt {
    pub fn for_arch(arch: Arch, root: &Path) -> Result<Apt> {
        if Arch::host() == Some(arch) || host_knows(arch) {
            return Ok(Apt { arch, opts: Vec::new() });
        }
        let state = root.join("apt").join(debian_arch(arch));
        let lists = state.join("lists");
        let cache = state.join("cache");
        for d in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let host = Arch::host().map(debian_arch).unwrap_or("amd64");
        let mut opts = vec![
            format!("-oDir::State::Lists={}", lists.display()),
            format!("-oDir::Cache={}", cache.display()),
            format!("-oAPT::Architectures::={host}"),
            format!("-oAPT::Architectures::={}", debian_arch(arch)),
        ];
        if is_root() {
            opts.push("-oAPT::Sandbox::User=root".to_string());
        }
        let apt = Apt { arch, opts };
        // Several processes may ask at once (parallel tests, a release building two images):
        // one updates, the others wait for it; the stamp says the lists are complete.
        let lock_path = state.join("xtask.lock");
        let lock = fs::File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
        let stamp = state.join("lists.complete");
        if !stamp.exists() {
            apt.update()?;
            crate::util::write_atomic(&stamp, b"", 0o644)?;
        }
        drop(lock);
        Ok(apt)
    }

    /// `apt-get update` of the private state (the host's own lists are never touched).
    pub fn update(&self) -> Result<()> {
        if self.opts.is_empty() {
            bail!("refusing to update the host's apt lists from here: run `apt-get update` yourself");
        }
        eprintln!(
            "apt-get update (private {} package lists, verified with the host's keyring)",
            debian_arch(self.arch)
        );
        let status =
            Command::new("apt-get").args(&self.opts).args(["update", "-q"]).status().context("cannot run apt-get")?;
        if !status.success() {
            bail!(
                "apt-get update for {} failed ({status}); check that the Debian mirror is reachable",
                debian_arch(self.arch)
            );
        }
        Ok(())
    }
}

/// Whether dpkg is configured for `arch` as a foreign architecture.
fn host_knows(arch: Arch) -> bool {
    Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().any(|a| a == debian_arch(arch)))
        .unwrap_or(false)
}

/// One package as apt's indices describe it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub package: String,
    pub version: String,
    pub sha256: Sha256Hex,
    pub file_name: String,
}

/// Debian spells some architectures differently from etcd.
pub fn debian_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::Ppc64le => "ppc64el",
        other => other.as_str(),
    }
}

/// `3.4.23-4+b4` -> `3.4.23`; `1:3.5.0+dfsg-1` -> `3.5.0`.
pub fn upstream_version(debian: &str) -> String {
    let no_epoch = debian.split_once(':').map(|(_, v)| v).unwrap_or(debian);
    let no_rev = no_epoch.rsplit_once('-').map(|(v, _)| v).unwrap_or(no_epoch);
    no_rev.split(['+', '~']).next().unwrap_or(no_rev).to_string()
}

/// Asks apt which version of `package` it would download for `arch`, and its pinned sum.
pub fn candidate(apt: &Apt, package: &str) -> Result<Candidate> {
    let arch = apt.arch;
    let spec = format!("{package}:{}", debian_arch(arch));
    let out = Command::new("apt-cache")
        .args(&apt.opts)
        .args(["show", "--no-all-versions", &spec])
        .stderr(Stdio::piped())
        .output()
        .context("cannot run apt-cache: the distro source needs a Debian or Ubuntu machine with apt")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    let (Some(version), Some(sha), Some(file)) = (field("Version"), field("SHA256"), field("Filename")) else {
        let hint = if apt.opts.is_empty() {
            "run `apt-get update` (as root) so that apt knows the package".to_string()
        } else {
            format!("the private {} package lists lack it; remove them to fetch them again", debian_arch(arch))
        };
        bail!("apt has no package {spec} ({}): {hint}", String::from_utf8_lossy(&out.stderr).trim());
    };
    let file_name = Path::new(&file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("apt-cache gave a Filename without a name: {file:?}"))?;
    Ok(Candidate {
        package: package.to_string(),
        version,
        sha256: sha.parse().with_context(|| format!("apt-cache gave a bad SHA256 for {spec}"))?,
        file_name,
    })
}

/// Makes sure the `.deb` of `cand` is in `cache_dir`, verified against apt's sum.
pub fn ensure_deb(apt: &Apt, cand: &Candidate, cache_dir: &Path) -> Result<PathBuf> {
    let arch = apt.arch;
    let dest = cache_dir.join(&cand.file_name);
    if dest.exists() {
        if Sha256Hex::of_file(&dest)? == cand.sha256 {
            return Ok(dest);
        }
        eprintln!("warning: cached {} does not match apt's sum; fetching it again", dest.display());
        fs::remove_file(&dest).with_context(|| format!("cannot remove {}", dest.display()))?;
    }
    let work = crate::util::StagingDir::beside(&dest)?;
    let spec = format!("{}:{}={}", cand.package, debian_arch(arch), cand.version);
    eprintln!("apt-get download {spec}");
    let mut cmd = Command::new("apt-get");
    cmd.args(&apt.opts);
    if is_root() && apt.opts.is_empty() {
        // The staging directory is private to root; apt's download sandbox user could not write it.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    let status = cmd.args(["download", "-q", &spec]).current_dir(work.path()).status().context("cannot run apt-get")?;
    if !status.success() {
        bail!("`apt-get download {spec}` failed ({status}); check that the Debian mirror is reachable");
    }
    let got = work.path().join(&cand.file_name);
    let actual =
        Sha256Hex::of_file(&got).with_context(|| format!("apt-get download did not produce {}", cand.file_name))?;
    if actual != cand.sha256 {
        bail!("{}: SHA-256 {actual} does not match apt's index ({}); nothing was kept", cand.file_name, cand.sha256);
    }
    fs::rename(&got, &dest).with_context(|| format!("cannot move the package to {}", dest.display()))?;
    Ok(dest)
}

/// Streams the file tree of a `.deb` (`dpkg-deb --fsys-tarfile`) through `visit`, one entry and
/// its path (without the leading `./`) at a time.
fn for_each_entry(
    deb: &Path,
    mut visit: impl FnMut(&mut tar::Entry<'_, std::process::ChildStdout>, &Path) -> Result<()>,
) -> Result<()> {
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb (package dpkg)")?;
    let stdout = child.stdout.take().context("dpkg-deb gave no output pipe")?;
    let mut archive = tar::Archive::new(stdout);
    let mut read_all = || -> Result<()> {
        for entry in archive.entries().context("cannot read the package's file tree")? {
            let mut entry = entry.context("corrupt package file tree")?;
            let path = entry.path().context("bad path in package")?.into_owned();
            let rel = path.strip_prefix(".").unwrap_or(&path).to_path_buf();
            visit(&mut entry, &rel).with_context(|| format!("{}: {}", deb.display(), rel.display()))?;
        }
        Ok(())
    };
    let res = read_all();
    let status = child.wait().context("dpkg-deb did not finish")?;
    res?;
    if !status.success() {
        bail!("dpkg-deb --fsys-tarfile {} failed ({status})", deb.display());
    }
    Ok(())
}

/// Extracts `/usr/bin/<name>` for each wanted name from a `.deb`, into `out_dir`.
/// Returns the names found.
pub fn extract_binaries(deb: &Path, wanted: &[&str], out_dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for_each_entry(deb, |entry, rel| {
        let Some(name) = rel.strip_prefix("usr/bin").ok().and_then(|p| p.to_str()) else {
            return Ok(());
        };
        if !wanted.contains(&name) || !entry.header().entry_type().is_file() {
            return Ok(());
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).context("cannot read it")?;
        crate::util::write_atomic(&out_dir.join(name), &data, 0o755)?;
        found.push(name.to_string());
        Ok(())
    })?;
    Ok(found)
}

/// Extracts the shared libraries and symlinks under `lib*/` and `usr/lib*/` of a `.deb` into
/// `root` (a sysroot for a foreign architecture). Paths are checked to stay inside `root`.
pub fn extract_libraries(deb: &Path, root: &Path) -> Result<usize> {
    let mut count = 0;
    for_each_entry(deb, |entry, rel| {
        let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        let in_lib = top.starts_with("lib") || rel.starts_with("usr/lib");
        if !in_lib || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Ok(());
        }
        let dest = root.join(rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
        } else if kind.is_symlink() {
            let target = entry.link_name().context("bad link")?.context("symlink without target")?.into_owned();
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let _ = fs::remove_file(&dest);
            std::os::unix::fs::symlink(&target, &dest).with_context(|| format!("cannot link {}", dest.display()))?;
        } else if kind.is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).context("cannot read it")?;
            crate::util::write_atomic(&dest, &data, 0o755)?;
            count += 1;
        }
        Ok(())
    })?;
    Ok(count)
}

/// Fetches both packages for `arch` and extracts the binaries into `out_dir`.
/// Returns the upstream version, the origin text and the artifacts' sums.
/// For an architecture other than the host's, the C library the dynamic binaries need is
/// extracted into `out_dir/sysroot/` (from Debian's `libc6` of that architecture): the image
/// stage copies the ELF interpreter and libraries from there instead of from the host.
pub fn acquire_into(
    apt: &Apt,
    cache_dir: &Path,
    out_dir: &Path,
) -> Result<(String, String, BTreeMap<String, Sha256Hex>)> {
    let arch = apt.arch;
    let mut artifacts = BTreeMap::new();
    let mut origin = Vec::new();
    let mut version = None;
    for (package, wanted) in PACKAGES {
        let cand = candidate(apt, package)?;
        let deb = ensure_deb(apt, &cand, cache_dir)?;
        let found = extract_binaries(&deb, wanted, out_dir)?;
        if !found.iter().any(|f| f == wanted[0]) {
            bail!("{} does not contain /usr/bin/{}", deb.display(), wanted[0]);
        }
        let upstream = upstream_version(&cand.version);
        if let Some(v) = &version {
            if v != &upstream {
                bail!("etcd-server {v} and etcd-client {upstream} differ; run `apt-get update` and retry");
            }
        }
        version = Some(upstream);
        origin.push(format!("debian:{}:{}={}", cand.package, debian_arch(arch), cand.version));
        artifacts.insert(cand.file_name.clone(), cand.sha256);
    }
    let version = version.context("no package was fetched")?;
    if Arch::host() != Some(arch) {
        let cand = candidate(apt, "libc6")?;
        let deb = ensure_deb(apt, &cand, cache_dir)?;
        extract_libraries(&deb, &out_dir.join("sysroot"))?;
        origin.push(format!("debian:libc6:{}={}", debian_arch(arch), cand.version));
        artifacts.insert(cand.file_name.clone(), cand.sha256);
    }
    Ok((version, origin.join(" "), artifacts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_versions() {
        assert_eq!(upstream_version("3.4.23-4+b4"), "3.4.23");
        assert_eq!(upstream_version("1:3.5.0+dfsg-1"), "3.5.0");
        assert_eq!(upstream_version("3.4.9"), "3.4.9");
    }
}
