//! Pinned SHA-256 sums in upstream's `SHA256SUMS` format (`<hex>  <file name>`), so that a
//! release's published file can be appended as it is.
//! In: the sums file. Out: the expected sum of one release tarball, or an error saying how to pin it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::{Arch, Sha256Hex};

#[derive(Debug, Clone)]
pub struct PinnedSums {
    path: PathBuf,
    sums: BTreeMap<String, Sha256Hex>,
}

/// The file name etcd releases use for a Linux tarball.
pub fn tarball_name(version: &str, arch: Arch) -> String {
    format!("etcd-v{version}-linux-{arch}.tar.gz")
}

impl PinnedSums {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read pinned checksums {}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut sums = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let (hex, name) = line.split_once(char::is_whitespace).with_context(|| {
                format!("{}: expected `<sha256>  <file name>` as printed by sha256sum, got {line:?}", at())
            })?;
            let sum: Sha256Hex = hex.parse().with_context(at)?;
            // sha256sum marks binary mode with a leading '*'.
            let name = name.trim_start().trim_start_matches('*').to_string();
            if name.is_empty() || name.contains('/') {
                bail!("{}: {name:?} is not a plain file name", at());
            }
            if let Some(prev) = sums.insert(name.clone(), sum) {
                if prev != sum {
                    bail!("{}: {name} is pinned twice with different sums; keep only the upstream one", at());
                }
            }
        }
        Ok(PinnedSums { path: path.to_path_buf(), sums })
    }

    /// The pinned sum of `name`. Never trusts on first use: a missing pin is an error.
    pub fn expect(&self, name: &str) -> Result<Sha256Hex> {
        match self.sums.get(name) {
            Some(sum) => Ok(*sum),
            None => {
                let version = name.strip_prefix("etcd-").and_then(|n| n.split("-linux-").next()).unwrap_or("vX.Y.Z");
                bail!(
                    "no pinned SHA-256 for {name} in {}: append the line for it from the release's SHA256SUMS \
                     (https://github.com/etcd-io/etcd/releases/download/{version}/SHA256SUMS), \
                     after checking it against the release signature, or pass --checksums FILE",
                    self.path.display()
                )
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::project_root;

    #[test]
    fn shipped_pins_hold_the_upstream_sums() {
        let pins = PinnedSums::load(&project_root().join("images/etcd.sha256")).unwrap();
        assert_eq!(
            pins.expect(&tarball_name("3.4.9", Arch::Amd64)).unwrap().to_string(),
            "bcab421f6bf4111accfceb004e0a0ac2bcfb92ac93081d9429e313248dd78c41"
        );
        assert!(pins.expect(&tarball_name("3.4.9", Arch::Arm64)).is_ok());
        assert!(pins.expect(&tarball_name("3.4.9", Arch::Ppc64le)).is_ok());
        assert!(pins.expect(&tarball_name("3.4.13", Arch::Amd64)).is_ok());
    }

    #[test]
    fn missing_pin_says_how_to_add_one() {
        let pins = PinnedSums::parse("", Path::new("sums")).unwrap();
        let msg = format!("{:#}", pins.expect("etcd-v3.5.0-linux-amd64.tar.gz").unwrap_err());
        assert!(msg.contains("v3.5.0/SHA256SUMS") && msg.contains("sums"), "{msg}");
    }

    #[test]
    fn accepts_sha256sum_output_and_rejects_garbage() {
        let a = "a".repeat(64);
        let pins = PinnedSums::parse(&format!("# comment\n{a}  x.tar.gz\n{a} *y.tar.gz\n"), Path::new("s")).unwrap();
        assert!(pins.expect("x.tar.gz").is_ok() && pins.expect("y.tar.gz").is_ok());
        let err = PinnedSums::parse("nothex  x.tar.gz\n", Path::new("s")).unwrap_err();
        assert!(format!("{err:#}").contains("s:1"));
        let err = PinnedSums::parse(&format!("{a}  x\n{}  x\n", "b".repeat(64)), Path::new("s")).unwrap_err();
        assert!(format!("{err:#}").contains("twice"));
    }
}
