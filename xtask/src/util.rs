//! Small pieces every stage shares: where the project lives, hashing,
//! architectures and the reproducible clock (`SOURCE_DATE_EPOCH`).

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub use crate::files::{replace_dir, temp_sibling, write_atomic, AtomicBatch, StagingDir};

/// The workspace root: the parent of the `xtask` crate.
pub fn project_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// Where outputs go by default: `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                project_root().join(dir)
            }
        }
        None => project_root().join("target"),
    }
}

/// The reproducible clock. Defaults to 0 (1970-01-01) so that builds are reproducible
/// without any setup; CI sets it to the commit time.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970; unset it or set e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)")
        }),
        _ => Ok(0),
    }
}

/// The architectures etcd publishes for Linux, named as in its release file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
    Ppc64le,
    S390x,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::Amd64, Arch::Arm64, Arch::Ppc64le, Arch::S390x];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
        }
    }

    /// The architecture this program runs on, if etcd is published for it.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            "powerpc64" if cfg!(target_endian = "little") => Some(Arch::Ppc64le),
            "s390x" => Some(Arch::S390x),
            _ => None,
        }
    }

    /// The ELF `e_machine` value of binaries for this architecture.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,
            Arch::Arm64 => 183,
            Arch::Ppc64le => 21,
            Arch::S390x => 22,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Arch::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .with_context(|| format!("unknown architecture {s:?}: use one of amd64, arm64, ppc64le, s390x"))
    }
}

/// A SHA-256 digest, printed as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Hex(pub [u8; 32]);

impl Sha256Hex {
    pub fn of_bytes(data: &[u8]) -> Self {
        Sha256Hex(Sha256::digest(data).into())
    }

    pub fn of_file(path: &Path) -> Result<Self> {
        let mut file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Sha256Hex(hasher.finalize().into()))
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Sha256Hex {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{s:?} is not a SHA-256 sum (64 hex digits)");
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).context("hex digits are ASCII")?;
            out[i] = u8::from_str_radix(hex, 16).with_context(|| format!("{s:?} is not hex"))?;
        }
        Ok(Sha256Hex(out))
    }
}

impl serde::Serialize for Sha256Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes everything passing through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    pub fn finish(self) -> (W, Sha256Hex, u64) {
        (self.inner, Sha256Hex(self.hasher.finalize().into()), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything passing through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), read: 0 }
    }

    pub fn finish(self) -> (R, Sha256Hex, u64) {
        (self.inner, Sha256Hex(self.hasher.finalize().into()), self.read)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Whether an executable is on `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file())).unwrap_or(false)
}

/// Whether this process runs as root (`/proc/self` belongs to the effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Shortens a path under the project root for messages.
pub fn display_rel(path: &Path) -> String {
    let root = project_root();
    match path.strip_prefix(&root) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// Runs `f` on every item, each on a thread of its own, and returns the results in the items'
/// order. A thread that panics gives an error saying `what` panicked.
pub fn each_in_thread<T: Sync, R: Send>(
    items: &[T],
    what: &str,
    f: impl Fn(usize, &T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items.iter().enumerate().map(|(i, item)| scope.spawn(move || f(i, item))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("{what} panicked")))).collect()
    })
}

/// The last `n` non-empty lines of `text`, indented: the part of a tool's output that says why.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// How many lines of a failed command's stderr an error quotes.
pub const STDERR_TAIL_LINES: usize = 8;

/// Runs `cmd` to its end and returns its stdout. When it cannot start, the error names the
/// program; when it fails, the error names the command (program and first argument), its exit
/// status and the end of its stderr. The one way this project runs a command for its output.
pub fn stdout_of(cmd: &mut std::process::Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| format!("cannot run {program}: is it installed?"))?;
    if !out.status.success() {
        let first = cmd.get_args().next().map(|a| format!(" {}", a.to_string_lossy())).unwrap_or_default();
        // Some programs (podman) say why on stdout when they say it at all.
        let said = match String::from_utf8_lossy(&out.stderr).trim() {
            "" => String::from_utf8_lossy(&out.stdout).into_owned(),
            err => err.to_string(),
        };
        bail!("`{program}{first}` failed ({}):\n{}", out.status, tail(&said, STDERR_TAIL_LINES));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether cargo sets the variable `name` for a program it runs or tests: it describes the crate
/// being built (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). A user's shell has none of them. A
/// cargo started with them sees build scripts' `rerun-if-env-changed` inputs differ from a plain
/// shell's (ring watches `CARGO_MANIFEST_DIR`), so it rebuilds half the dependency tree, and does
/// again on the user's next ordinary build.
pub fn set_by_cargo_for_a_crate(name: &str) -> bool {
    name == "CARGO"
        || name == "OUT_DIR"
        || name == "CARGO_TARGET_TMPDIR"
        || name == "CARGO_PRIMARY_PACKAGE"
        || ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_RUSTC_"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// `cmd` without the variables [`set_by_cargo_for_a_crate`] names, as a user's shell runs it.
pub fn as_from_a_shell(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_a_crate) {
            cmd.env_remove(&name);
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_cargo_sets_for_a_crate_is_told_from_the_users_settings() {
        for set in
            ["CARGO", "CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_PKG_NAME", "CARGO_CRATE_NAME", "OUT_DIR"]
        {
            assert!(set_by_cargo_for_a_crate(set), "{set}");
        }
        for user in ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_TERM_COLOR", "CARGO_BUILD_JOBS", "PATH"] {
            assert!(!set_by_cargo_for_a_crate(user), "{user}");
        }
    }

    #[test]
    fn each_in_thread_keeps_the_order_and_turns_a_panic_into_an_error() {
        let items = [3u64, 1, 2];
        let out = each_in_thread(&items, "a worker", |i, n| {
            std::thread::sleep(std::time::Duration::from_millis(10 * n));
            if *n == 2 {
                panic!("worker {i} gives up");
            }
            Ok(i as u64 * 10 + n)
        });
        assert_eq!(out[0].as_ref().unwrap(), &3);
        assert_eq!(out[1].as_ref().unwrap(), &11);
        assert_eq!(out[2].as_ref().unwrap_err().to_string(), "a worker panicked");
    }

    #[test]
    fn sha256_round_trips_and_rejects_garbage() {
        let d = Sha256Hex::of_bytes(b"abc");
        assert_eq!(d.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.to_string().parse::<Sha256Hex>().unwrap(), d);
        assert!("xyz".parse::<Sha256Hex>().is_err());
        assert!("g".repeat(64).parse::<Sha256Hex>().is_err());
    }
}
