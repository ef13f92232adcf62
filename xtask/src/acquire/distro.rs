//! Debian's etcd packages as a source: `etcd-server` and `etcd-client`, fetched with
//! `apt-get download` and checked against the SHA-256 in apt's signed indices.
//! In: an architecture. Out: the verified `.deb` files in the cache and their binaries.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::definition::DebianSuite;
use crate::util::{is_root, Arch, Sha256Hex};

/// The packages that carry etcd and etcdctl, and the binaries taken from each (the first is
/// required). etcdutl (3.5 and later) is in etcd-server in Debian 13; either package may carry it.
pub const PACKAGES: [(&str, &[&str]); 2] =
    [("etcd-server", &["etcd", "etcdutl"]), ("etcd-client", &["etcdctl", "etcdutl"])];

/// The keyring private package lists of a named Debian suite are verified with.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The Debian mirror used for a named suite when the host's apt sources name none.
pub const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// How apt is invoked for one architecture and Debian suite. The host's own configuration
/// serves the host's suite for the host's architecture and any foreign one dpkg is configured
/// for; any other architecture gets a private apt state under the output root (same sources,
/// same keyring), and any other suite a private apt state of its own (the host's Debian mirror,
/// Debian's keyring). Nothing on the host is changed.
#[derive(Debug, Clone)]
pub struct Apt {
    pub arch: Arch,
    /// The Debian codename served by private lists, None for the host's own sources.
    pub suite: Option<String>,
    opts: Vec<String>,
}

impl Apt {
    /// The host's own suite for `arch`.
    pub fn for_arch(arch: Arch, root: &Path) -> Result<Apt> {
        Apt::new(arch, &DebianSuite::Host, root)
    }

    /// `arch` from `suite`: the host's apt configuration when it serves both, else private
    /// package lists under `<root>/apt/`, updated once (under a lock) and reused afterwards.
    pub fn new(arch: Arch, suite: &DebianSuite, root: &Path) -> Result<Apt> {
        let suite = match suite {
            DebianSuite::Named(name) if Some(name.as_str()) != host_codename().as_deref() => Some(name.clone()),
            _ => None,
        };
        let Some(name) = suite else {
            if Arch::host() == Some(arch) || host_knows(arch) {
                return Ok(Apt { arch, suite: None, opts: Vec::new() });
            }
            let state = root.join("apt").join(debian_arch(arch));
            let opts = private_opts(&state, arch)?;
            let apt = Apt { arch, suite: None, opts };
            apt.update_once(&state)?;
            return Ok(apt);
        };
        let state = root.join("apt").join(format!("{name}-{}", debian_arch(arch)));
        let mut opts = private_opts(&state, arch)?;
        if !Path::new(DEBIAN_KEYRING).is_file() {
            bail!(
                "{DEBIAN_KEYRING} is missing: install the package debian-archive-keyring, which verifies \
                 Debian's {name} package lists"
            );
        }
        let mirror = host_debian_mirror();
        let etc = state.join("etc");
        for d in [etc.join("sources.list.d"), etc.join("preferences.d")] {
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let sources = etc.join("sources.list");
        let line = format!("deb [signed-by={DEBIAN_KEYRING}] {mirror} {name} main\n");
        if fs::read_to_string(&sources).ok().as_deref() != Some(line.as_str()) {
            crate::util::write_atomic(&sources, line.as_bytes(), 0o644)?;
            // Lists of other sources are stale: fetch them again.
            let _ = fs::remove_file(state.join("lists.complete"));
        }
        let status = state.join("status");
        if !status.exists() {
            crate::util::write_atomic(&status, b"", 0o644)?;
        }
        opts.extend([
            format!("-oDir::Etc::SourceList={}", sources.display()),
            format!("-oDir::Etc::SourceParts={}", etc.join("sources.list.d").display()),
            format!("-oDir::Etc::Preferences={}", etc.join("preferences").display()),
            format!("-oDir::Etc::PreferencesParts={}", etc.join("preferences.d").display()),
            format!("-oDir::State::status={}", status.display()),
            "-oAcquire::Languages=none".to_string(),
        ]);
        let apt = Apt { arch, suite: Some(name), opts };
        apt.update_once(&state)?;
        Ok(apt)
    }

    /// Whether the binaries need the C library of their own suite or architecture beside them
    /// (`sysroot/`): always, unless the host's own apt serves the host's architecture.
    pub fn needs_sysroot(&self) -> bool {
        self.suite.is_some() || Arch::host() != Some(self.arch)
    }

    /// What these package lists are, for messages: "trixie arm64" or "the host's amd64".
    pub fn describe(&self) -> String {
        match &self.suite {
            Some(s) => format!("Debian {s} {}", debian_arch(self.arch)),
            None => format!("the host's {}", debian_arch(self.arch)),
        }
    }

    /// Several processes may ask at once (parallel tests, a release building two images):
    /// one updates, the others wait for it; the stamp says the lists are complete.
    fn update_once(&self, state: &Path) -> Result<()> {
        let lock_path = state.join("xtask.lock");
        let lock = fs::File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
        let stamp = state.join("lists.complete");
        if !stamp.exists() {
            self.update()?;
            crate::util::write_atomic(&stamp, b"", 0o644)?;
        }
        drop(lock);
        Ok(())
    }

    /// `apt-get update` of the private state (the host's own lists are never touched).
    pub fn update(&self) -> Result<()> {
        if self.opts.is_empty() {
            bail!("refusing to update the host's apt lists from here: run `apt-get update` yourself");
        }
        eprintln!("apt-get update (private package lists of {}, verified with the keyring)", self.describe());
        let t = std::time::Instant::now();
        let sh = Shell::new().context("cannot start a shell")?;
        let opts = &self.opts;
        cmd!(sh, "apt-get {opts...} update -q").quiet().run().with_context(|| {
            format!(
                "apt-get update of {} failed (see above); check that the Debian mirror is reachable",
                self.describe()
            )
        })?;
        eprintln!("apt-get update of {}: {:.1} s", self.describe(), t.elapsed().as_secs_f64());
        Ok(())
    }
}

/// The options of a private apt state in `state` (lists, cache) for `arch` beside the host's.
fn private_opts(state: &Path, arch: Arch) -> Result<Vec<String>> {
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
    Ok(opts)
}

/// The host's Debian codename (`VERSION_CODENAME` of /etc/os-release on Debian), if it is Debian.
pub fn host_codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    (field("ID").as_deref() == Some("debian")).then(|| field("VERSION_CODENAME")).flatten().filter(|c| !c.is_empty())
}

/// The Debian mirror the host's apt sources use (the first `deb` source whose URI ends in
/// `/debian`, deb822 or one-line style), else [`DEFAULT_DEBIAN_MIRROR`].
pub fn host_debian_mirror() -> String {
    debian_mirror_in(Path::new("/etc/apt"))
}

/// The Debian mirror of the apt configuration directory `etc_apt`: its `sources.list`, then
/// `sources.list.d/*.list` and `*.sources` in name order; [`DEFAULT_DEBIAN_MIRROR`] when none
/// names one.
fn debian_mirror_in(etc_apt: &Path) -> String {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        let name = f.to_string_lossy();
        let found = if name.ends_with(".sources") {
            debian_mirror_deb822(&text)
        } else if name.ends_with(".list") {
            debian_mirror_one_line(&text)
        } else {
            None
        };
        if let Some(m) = found {
            return m;
        }
    }
    DEFAULT_DEBIAN_MIRROR.to_string()
}

fn is_debian_archive(uri: &str) -> bool {
    (uri.starts_with("http://") || uri.starts_with("https://")) && uri.trim_end_matches('/').ends_with("/debian")
}

/// The first Debian archive URI of an enabled `Types: deb` stanza.
fn debian_mirror_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        if field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        if let Some(uri) =
            field("URIs").and_then(|u| u.split_whitespace().find(|u| is_debian_archive(u)).map(str::to_string))
        {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// The first Debian archive URI of a `deb [options] URI suite components` line.
fn debian_mirror_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let uri = rest.split_whitespace().next()?;
        is_debian_archive(uri).then(|| uri.trim_end_matches('/').to_string())
    })
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
            format!("the private package lists of {} lack it; remove them to fetch them again", apt.describe())
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
    let mut opts = apt.opts.clone();
    if is_root() && apt.opts.is_empty() {
        // The staging directory is private to root; apt's download sandbox user could not write it.
        opts.extend(["-o".to_string(), "APT::Sandbox::User=root".to_string()]);
    }
    let sh = Shell::new().context("cannot start a shell")?;
    sh.change_dir(work.path());
    if let Err(e) = cmd!(sh, "apt-get {opts...} download -q {spec}").quiet().run() {
        let hint = if apt.opts.is_empty() {
            "run `apt-get update` (as root) when the mirror no longer has this version"
        } else {
            "when the mirror no longer has this version, remove the private package lists under the output root's apt/ to fetch them again"
        };
        bail!("{e}: from {}; check that the Debian mirror is reachable; {hint}", apt.describe());
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
        let mut names = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
        let (top, second) = (names.next().unwrap_or_default(), names.next().unwrap_or_default());
        // lib*/ and usr/lib*/ (usr/lib64 holds the interpreter's link on a merged-/usr suite).
        let in_lib =
            top.starts_with("lib") || (top == "usr" && matches!(second.as_str(), "lib" | "lib32" | "lib64" | "libx32"));
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

/// Extracts the top-level links of a merged-/usr root (`lib -> usr/lib`, `lib64 -> usr/lib64`)
/// from a `base-files` package into `root`: since Debian 13 the C library lives under `usr/`
/// only, and these links (shipped by base-files) are where binaries find their ELF interpreter
/// (`/lib64/ld-linux-x86-64.so.2`). Only relative links to `usr/<same name>` are taken.
pub fn extract_merged_usr_links(deb: &Path, root: &Path) -> Result<usize> {
    let mut count = 0;
    for_each_entry(deb, |entry, rel| {
        let mut parts = rel.components();
        let (Some(std::path::Component::Normal(name)), None) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let name = name.to_string_lossy().into_owned();
        if !name.starts_with("lib") || !entry.header().entry_type().is_symlink() {
            return Ok(());
        }
        let target = entry.link_name().context("bad link")?.context("symlink without target")?.into_owned();
        if target != Path::new("usr").join(&name) {
            return Ok(());
        }
        let dest = root.join(&name);
        if dest.symlink_metadata().is_ok() {
            return Ok(());
        }
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        std::os::unix::fs::symlink(&target, &dest).with_context(|| format!("cannot link {}", dest.display()))?;
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// Fetches both packages for `arch` and extracts the binaries into `out_dir`.
/// Returns the upstream version, the origin text and the artifacts' sums.
/// When the binaries do not come from the host's own suite and architecture
/// ([`Apt::needs_sysroot`]), the C library they need is extracted into `out_dir/sysroot/` (from
/// Debian's `libc6` of that suite and architecture, and for a merged-/usr suite the `lib*` links
/// of its `base-files`): the image stage copies the ELF interpreter and libraries from there
/// instead of from the host, and `finish` runs the binaries through that interpreter.
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
    if apt.needs_sysroot() {
        let sysroot = out_dir.join("sysroot");
        let cand = candidate(apt, "libc6")?;
        let deb = ensure_deb(apt, &cand, cache_dir)?;
        extract_libraries(&deb, &sysroot)?;
        origin.push(format!("debian:libc6:{}={}", debian_arch(arch), cand.version));
        artifacts.insert(cand.file_name.clone(), cand.sha256);
        let top_level_lib = ["lib", "lib64"].iter().any(|d| sysroot.join(d).symlink_metadata().is_ok());
        if !top_level_lib {
            // A merged-/usr suite: the C library is under usr/ only; base-files has the links.
            let cand = candidate(apt, "base-files")?;
            let deb = ensure_deb(apt, &cand, cache_dir)?;
            if extract_merged_usr_links(&deb, &sysroot)? == 0 {
                bail!(
                    "{}: libc6 has no lib/ or lib64/ and base-files no lib -> usr/lib link; \
                     the ELF interpreter would not be found",
                    apt.describe()
                );
            }
            origin.push(format!("debian:base-files:{}={}", debian_arch(arch), cand.version));
            artifacts.insert(cand.file_name.clone(), cand.sha256);
        }
    }
    Ok((version, origin.join(" "), artifacts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_debian_mirror_is_read_from_either_format() {
        let deb822 =
            "Types: deb\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(debian_mirror_deb822(deb822).as_deref(), Some("http://mirror.example/debian"));
        let security_only = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(debian_mirror_deb822(security_only), None);
        let disabled =
            "Enabled: no\nTypes: deb\nURIs: http://x.example/debian\n\nTypes: deb-src\nURIs: http://y.example/debian\n";
        assert_eq!(debian_mirror_deb822(disabled), None);
        let list = "# deb http://old.example/debian bookworm main\ndeb [signed-by=/k.gpg] https://m.example/debian bookworm main\n";
        assert_eq!(debian_mirror_one_line(list).as_deref(), Some("https://m.example/debian"));
        assert_eq!(debian_mirror_one_line("deb http://archive.ubuntu.com/ubuntu noble main\n"), None);
    }

    /// The mirror comes from the files of an apt configuration directory, in apt's order, and
    /// only when none of them names a Debian archive is it Debian's default.
    #[test]
    fn the_mirror_is_the_first_one_apts_files_name_else_the_default() {
        let etc_apt = tempfile::tempdir().unwrap();
        let d = etc_apt.path().join("sources.list.d");
        // Nothing configured at all, then files naming no Debian archive: the default.
        assert_eq!(debian_mirror_in(etc_apt.path()), DEFAULT_DEBIAN_MIRROR, "no sources at all");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("cloud.list"), "deb https://packages.cloud.example/apt cloud-sdk main\n").unwrap();
        fs::write(d.join("old.list.disabled"), "deb http://disabled.example/debian bookworm main\n").unwrap();
        fs::write(etc_apt.path().join("sources.list"), "").unwrap();
        assert_eq!(debian_mirror_in(etc_apt.path()), DEFAULT_DEBIAN_MIRROR, "no source names a Debian archive");
        // A deb822 file naming one: that one, whatever the default is.
        fs::write(d.join("debian.sources"), "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
            .unwrap();
        assert_eq!(debian_mirror_in(etc_apt.path()), "http://mirror.example/debian", "the mirror of debian.sources");
        // sources.list comes before sources.list.d, and a one-line file counts as much.
        fs::write(etc_apt.path().join("sources.list"), "deb https://first.example/debian bookworm main\n").unwrap();
        assert_eq!(debian_mirror_in(etc_apt.path()), "https://first.example/debian", "sources.list's mirror");
    }

    #[test]
    fn upstream_versions() {
        assert_eq!(upstream_version("3.4.23-4+b4"), "3.4.23");
        assert_eq!(upstream_version("1:3.5.0+dfsg-1"), "3.5.0");
        assert_eq!(upstream_version("3.4.9"), "3.4.9");
    }
}
