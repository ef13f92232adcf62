//! Portable service image: `cargo xtask portable`.
//! In: verified etcd binaries (acquired on demand, or `--etcd-dir`), the unit templates in
//! `systemd/portable/`, the TLS file list of [`crate::render::config`], SOURCE_DATE_EPOCH.
//! Out: `target/portable/etcd_<version>/` (a directory image) and `etcd_<version>.raw`
//! (squashfs, byte-reproducible), each holding the binaries, the interpreter and libraries a
//! dynamic etcd needs ([`crate::image::elf`]), `/usr/lib/os-release`, every mount point a
//! read-only image needs, and `etcd.service`, `etcd-backup.service`, `etcd-backup.timer`,
//! `etcd-defrag.service`, `etcd-defrag.timer` under `/usr/lib/systemd/system/`, written for the
//! default portable profile (dynamic user, StateDirectory, certificates through LoadCredential,
//! host-side EnvironmentFile).
//!
//! The host side (what `portablectl attach` expects on the machine) is rendered per node by
//! `cargo xtask render` as `<node>.portable/`: /etc/etcd/etcd.conf, /etc/etcd/pki/,
//! /etc/etcd/etcdctl/, and the node's own defragmentation time as a drop-in for the image's
//! etcd-defrag.timer.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::acquire::{self, AcquireOptions, Acquired, SourcePolicy};
use crate::definition::{check_version, Definition};
use crate::image::elf;
use crate::render::config::{TargetPaths, TLS_FILES};
use crate::render::template;
use crate::util::{display_rel, source_date_epoch, target_dir, temp_sibling, Arch, Sha256Hex, StagingDir};

/// Where units go inside the image; `portablectl` looks there.
pub const UNIT_DIR: &str = "usr/lib/systemd/system";

/// The units of the image, from `systemd/portable/` (`.in` files are filled in).
pub const UNITS: [&str; 5] =
    ["etcd.service", "etcd-backup.service", "etcd-backup.timer", "etcd-defrag.service", "etcd-defrag.timer"];

/// Directories a read-only image must provide as mount points (the default profile binds or
/// mounts over each), with their modes; and the StateDirectory targets.
const DIRS: [(&str, u32); 15] = [
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/lib", 0o755),
    ("usr/lib/systemd", 0o755),
    ("usr/lib/systemd/system", 0o755),
    ("var", 0o755),
    ("var/lib", 0o755),
    ("var/lib/private", 0o700),
    ("var/tmp", 0o1777),
];

/// StateDirectory= of the units: mount points under /var/lib and /var/lib/private.
const STATE_DIRS: [&str; 2] = ["etcd", "etcd-backup"];

/// Files that must exist (empty) for the default profile's bind mounts.
const EMPTY_FILES: [&str; 2] = ["etc/machine-id", "etc/resolv.conf"];

/// Build the etcd portable service image: a directory image and a squashfs .raw
#[derive(Debug, clap::Args)]
#[command(long_about)]
pub struct Portable {
    /// Architecture [default: this machine's]
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<Arch>,
    /// Where etcd may come from when it is not cached yet
    #[arg(long, default_value_t, value_name = "SOURCE")]
    pub source: SourcePolicy,
    /// Use the verified binaries in DIR (laid out like `cargo xtask fetch` output) instead of acquiring
    #[arg(long, value_name = "DIR", conflicts_with = "source")]
    pub etcd_dir: Option<PathBuf>,
    /// Output directory [default: target/portable]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Build only the directory image, no .raw (no mksquashfs needed)
    #[arg(long)]
    pub no_raw: bool,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    /// `etcd_<version>`: the image name, whose prefix `etcd` matches the units.
    pub name: String,
    pub dir: PathBuf,
    pub raw: Option<PathBuf>,
    pub raw_sha256: Option<Sha256Hex>,
}

impl Portable {
    pub fn run(self) -> Result<()> {
        let def = Definition::load_default()?;
        let acquired = match &self.etcd_dir {
            Some(dir) => Acquired::open(dir).with_context(|| {
                format!("--etcd-dir {}: not a directory of verified binaries (run `cargo xtask fetch`)", dir.display())
            })?,
            None => {
                let arch = match self.arch {
                    Some(a) => a,
                    None => Arch::host().context("this machine's architecture has no etcd build: pass --arch")?,
                };
                let opts = AcquireOptions { source: self.source, ..Default::default() };
                acquire::ensure(&def, arch, &opts)?
            }
        };
        let out = self.out.clone().unwrap_or_else(|| target_dir().join("portable"));
        let env = def.runtime_env(&acquired.provenance.version, acquired.provenance.arch)?;
        let built = build(&acquired, &out, source_date_epoch()?, !self.no_raw, &env)?;
        println!("{}: directory image {}", built.name, display_rel(&built.dir));
        if let (Some(raw), Some(sum)) = (&built.raw, &built.raw_sha256) {
            println!("{}: squashfs image {} (sha256 {sum})", built.name, display_rel(raw));
        }
        println!(
            "on a host: install {} into /var/lib/portables/ and follow the node's INSTALL.md from `cargo xtask render` \
             (portablectl attach --enable --profile=etcd {})",
            built.raw.as_ref().unwrap_or(&built.dir).display(),
            built.name
        );
        Ok(())
    }
}

/// `/usr/lib/os-release` of the image.
pub fn os_release(version: &str) -> Result<String> {
    let text = template::read("portable/os-release.in")?;
    template::fill("systemd/portable/os-release.in", &text, &[("VERSION", version.to_string())])
}

/// The units of the image by file name, filled in.
pub fn units(runtime_env: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    let pki = TargetPaths::standard().pki_dir;
    let pki = pki.trim_end_matches('/');
    let creds: Vec<String> = TLS_FILES.iter().map(|(_, f)| format!("LoadCredential={f}:{pki}/{f}")).collect();
    let flags: Vec<String> = TLS_FILES
        .iter()
        .map(|(key, f)| {
            crate::render::config::flag_of(key)
                .map(|flag| format!("{flag}=${{CREDENTIALS_DIRECTORY}}/{f}"))
                .with_context(|| format!("{key} is not an ETCD_* variable"))
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for unit in UNITS {
        let text = if unit == "etcd.service" {
            let origin = "systemd/portable/etcd.service.in";
            template::fill(
                origin,
                &template::read("portable/etcd.service.in")?,
                &[
                    ("LOAD_CREDENTIALS", creds.join("\n")),
                    ("TLS_FLAGS", format!("\\\n  {}", flags.join(" \\\n  "))),
                    ("ENVIRONMENT", environment_lines(runtime_env)),
                ],
            )?
        } else {
            template::read(&format!("portable/{unit}"))?
        };
        out.push((unit.to_string(), text));
    }
    Ok(out)
}

/// `Environment=` lines for what etcd needs on this architecture, or a comment saying nothing is.
pub fn environment_lines(runtime_env: &BTreeMap<String, String>) -> String {
    match runtime_env.is_empty() {
        true => "# This etcd supports this architecture as it is: no ETCD_UNSUPPORTED_ARCH.".to_string(),
        false => runtime_env.iter().map(|(k, v)| format!("Environment={k}={v}")).collect::<Vec<_>>().join("\n"),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn put(root: &Path, rel: &str, mode: u32, data: &[u8]) -> Result<()> {
    crate::util::write_atomic(&root.join(rel), data, mode)
}

fn copy(root: &Path, rel: &str, mode: u32, from: &Path) -> Result<()> {
    let dest = root.join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::copy(from, &dest).with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dest.display()))
}

/// Writes the directory image of `acquired` into `root` (empty).
pub fn write_tree(acquired: &Acquired, root: &Path, runtime_env: &BTreeMap<String, String>) -> Result<()> {
    let p = &acquired.provenance;
    for (dir, mode) in DIRS {
        mkdir(&root.join(dir), mode)?;
    }
    for state in STATE_DIRS {
        mkdir(&root.join("var/lib").join(state), 0o755)?;
        mkdir(&root.join("var/lib/private").join(state), 0o700)?;
    }
    for f in EMPTY_FILES {
        put(root, f, 0o644, b"")?;
    }
    put(root, "usr/lib/os-release", 0o644, os_release(&p.version)?.as_bytes())?;
    for (unit, text) in units(runtime_env)? {
        put(root, &format!("{UNIT_DIR}/{unit}"), 0o644, text.as_bytes())?;
    }
    let mut binaries = Vec::new();
    for name in ["etcd", "etcdctl", "etcdutl"] {
        if p.files.contains_key(name) {
            binaries.push((name.to_string(), acquired.binary(name)));
        }
    }
    if !binaries.iter().any(|(n, _)| n == "etcd") || !binaries.iter().any(|(n, _)| n == "etcdctl") {
        bail!(
            "{}: provenance.json lists no etcd or etcdctl: acquire etcd again with `cargo xtask fetch`",
            acquired.dir.display()
        );
    }
    for (name, path) in &binaries {
        copy(root, &format!("usr/bin/{name}"), 0o755, path)?;
    }
    for rf in elf::runtime_closure(&binaries, p.arch, &elf::runtime_root(&acquired.dir))? {
        copy(root, rf.image_path.trim_start_matches('/'), 0o755, &rf.host_path)
            .with_context(|| format!("cannot copy {} ({})", rf.image_path, rf.reason))?;
    }
    // Parents created on the way (lib/x86_64-linux-gnu, ...) get the usual mode.
    fix_dir_modes(root)?;
    Ok(())
}

/// Directories not listed in DIRS get 0755 regardless of the umask.
fn fix_dir_modes(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            if entry.file_type().with_context(|| format!("cannot stat {}", path.display()))?.is_dir() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                let listed = DIRS.iter().any(|(d, _)| *d == rel) || rel.starts_with("var/lib/");
                if !listed {
                    mkdir(&path, 0o755)?;
                }
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Builds `out/etcd_<version>/` and, with `raw`, `out/etcd_<version>.raw`.
pub fn build(
    acquired: &Acquired,
    out: &Path,
    epoch: u64,
    raw: bool,
    runtime_env: &BTreeMap<String, String>,
) -> Result<Built> {
    let version = &acquired.provenance.version;
    check_version(version).with_context(|| format!("{}/provenance.json: version", acquired.dir.display()))?;
    let name = format!("etcd_{version}");
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let dir = out.join(&name);
    let staged = StagingDir::beside(&dir)?;
    mkdir(staged.path(), 0o755)?;
    write_tree(acquired, staged.path(), runtime_env)
        .with_context(|| format!("cannot write the portable image {name}"))?;
    staged.commit(&dir)?;
    if !raw {
        return Ok(Built { name, dir, raw: None, raw_sha256: None });
    }
    let raw_path = out.join(format!("{name}.raw"));
    squashfs(&dir, &raw_path, epoch)?;
    let sum = Sha256Hex::of_file(&raw_path)?;
    Ok(Built { name, dir, raw: Some(raw_path), raw_sha256: Some(sum) })
}

/// `mksquashfs` of `dir` into `dest` (temp file, then rename): all files root-owned, every
/// timestamp `epoch`, no extended attributes, reproducible.
pub fn squashfs(dir: &Path, dest: &Path, epoch: u64) -> Result<()> {
    let tmp = temp_sibling(dest);
    let _ = fs::remove_file(&tmp);
    let epoch = epoch.to_string();
    let result = Command::new("mksquashfs")
        .arg(dir)
        .arg(&tmp)
        .args(["-noappend", "-reproducible", "-all-root", "-no-xattrs", "-quiet", "-no-progress"])
        .args(["-mkfs-time", &epoch, "-all-time", &epoch])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with the flags that say the same.
        .env_remove("SOURCE_DATE_EPOCH")
        .output();
    let out = match result {
        Ok(out) => out,
        Err(err) => {
            return Err(err).context("cannot run mksquashfs: install squashfs-tools (Debian: apt-get install squashfs-tools), or pass --no-raw");
        }
    };
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        bail!("mksquashfs {} failed ({}): {}", dir.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    fs::rename(&tmp, dest).with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_sets_what_the_architecture_needs() {
        let env = BTreeMap::from([("ETCD_UNSUPPORTED_ARCH".to_string(), "arm64".to_string())]);
        let arm = units(&env).unwrap();
        let service = &arm.iter().find(|(n, _)| n == "etcd.service").unwrap().1;
        assert!(service.lines().any(|l| l == "Environment=ETCD_UNSUPPORTED_ARCH=arm64"), "{service}");
        let plain = units(&BTreeMap::new()).unwrap();
        assert!(!plain.iter().any(|(_, t)| t.contains("Environment=ETCD_")));
    }
}
