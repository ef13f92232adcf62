//! Image definitions: `images/*.toml`, parsed strictly (unknown fields are errors).
//! In: a TOML file. Out: a checked [`Definition`] that every stage reads.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::util::{project_root, Arch};

/// The default definition file, relative to the project root.
pub const DEFAULT_DEFINITION: &str = "images/etcd.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub etcd: EtcdSpec,
    /// What the OCI image contains and how it runs (read by `cargo xtask image`).
    #[serde(default)]
    pub image: Option<crate::image::spec::ImageSpec>,
    /// Where the definition was read from (set after parsing).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSpec {
    pub version: String,
    pub arches: Vec<Arch>,
    pub checksums: PathBuf,
    #[serde(default)]
    pub mirrors: Vec<String>,
    #[serde(default)]
    pub allow_distro_fallback: bool,
    #[serde(default)]
    pub go_version: Option<String>,
    /// The architectures each release line ("3.4") supports; on any other, etcd exits at start
    /// unless `ETCD_UNSUPPORTED_ARCH` names the architecture (see [`Definition::runtime_env`]).
    #[serde(default)]
    pub supported_arches: BTreeMap<String, Vec<Arch>>,
}

impl Definition {
    /// Reads the default definition, or `$XTASK_DEFINITION` when set.
    pub fn load_default() -> Result<Self> {
        match std::env::var_os("XTASK_DEFINITION") {
            Some(p) => Self::load(Path::new(&p)),
            None => Self::load(&project_root().join(DEFAULT_DEFINITION)),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read image definition {}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut def: Definition =
            toml::from_str(text).with_context(|| format!("invalid image definition {}", path.display()))?;
        def.path = path.to_path_buf();
        def.check().with_context(|| format!("invalid image definition {}", path.display()))?;
        Ok(def)
    }

    fn check(&self) -> Result<()> {
        check_version(&self.etcd.version).context("field etcd.version")?;
        if self.etcd.arches.is_empty() {
            bail!("field etcd.arches is empty: list at least one of amd64, arm64, ppc64le, s390x");
        }
        for line in self.etcd.supported_arches.keys() {
            let parts: Vec<&str> = line.split('.').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
                bail!("field etcd.supported_arches: {line:?} is not a release line like \"3.4\"");
            }
        }
        for m in &self.etcd.mirrors {
            check_mirror_url(m).context("field etcd.mirrors")?;
        }
        if let Some(image) = &self.image {
            image.check().context("section [image]")?;
        }
        Ok(())
    }

    /// The environment etcd `version` needs to run at all on `arch`: `ETCD_UNSUPPORTED_ARCH=<arch>`
    /// where `etcd.supported_arches` says its release line does not support `arch` (etcd 3.4 on
    /// arm64 exits 1 without it). The image config, the portable unit and host bundles carry it.
    /// It is not a flag's variable, so it never conflicts with a flag a user passes.
    pub fn runtime_env(&self, version: &str, arch: Arch) -> Result<BTreeMap<String, String>> {
        check_version(version)?;
        let line = version.split('.').take(2).collect::<Vec<_>>().join(".");
        let Some(supported) = self.etcd.supported_arches.get(&line) else {
            bail!(
                "{}: field etcd.supported_arches has no entry for etcd {line} (of {version}): add                  \"{line}\" = [...] with the architectures etcdmain's checkSupportArch accepts in that release line",
                self.path.display()
            );
        };
        let mut env = BTreeMap::new();
        if !supported.contains(&arch) {
            env.insert("ETCD_UNSUPPORTED_ARCH".to_string(), arch.as_str().to_string());
        }
        Ok(env)
    }

    /// The pinned checksums file, resolved against the definition's directory.
    pub fn checksums_path(&self) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(&self.etcd.checksums)
    }
}

/// An etcd version as released: `MAJOR.MINOR.PATCH` with an optional `-suffix`, no leading `v`.
pub fn check_version(v: &str) -> Result<()> {
    let core = v.split('-').next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if let Some(rest) = v.strip_prefix('v') {
        bail!("version {v:?} must not start with 'v': write {rest:?}");
    }
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        bail!("version {v:?} is not of the form MAJOR.MINOR.PATCH (e.g. 3.4.9)");
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        bail!("version {v:?} contains characters other than letters, digits, '.' and '-'");
    }
    Ok(())
}

/// Mirrors are http(s) or file URLs.
pub fn check_mirror_url(url: &str) -> Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file://") {
        Ok(())
    } else {
        bail!("mirror {url:?} is not an http://, https:// or file:// URL")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_definition_parses() {
        let def = Definition::load(&project_root().join(DEFAULT_DEFINITION)).unwrap();
        assert_eq!(def.etcd.version, "3.4.9");
        assert_eq!(def.etcd.arches, vec![Arch::Amd64, Arch::Arm64]);
        assert!(def.checksums_path().exists());
    }

    #[test]
    fn unsupported_architectures_get_their_variable_from_the_definition() {
        let def = Definition::load(&project_root().join(DEFAULT_DEFINITION)).unwrap();
        let env = |v, a| def.runtime_env(v, a).unwrap();
        assert_eq!(env("3.4.9", Arch::Arm64).get("ETCD_UNSUPPORTED_ARCH").map(String::as_str), Some("arm64"));
        assert!(env("3.4.9", Arch::Amd64).is_empty());
        assert!(env("3.4.23", Arch::Ppc64le).is_empty());
        assert!(env("3.5.16", Arch::Arm64).is_empty());
        let msg = format!("{:#}", def.runtime_env("9.9.0", Arch::Amd64).unwrap_err());
        assert!(msg.contains("etcd.supported_arches") && msg.contains("\"9.9\""), "{msg}");
        let p = Path::new("images/x.toml");
        let bad =
            "[etcd]\nversion='3.4.9'\narches=['amd64']\nchecksums='x'\n[etcd.supported_arches]\n'3.4.9'=['amd64']\n";
        assert!(format!("{:#}", Definition::parse(bad, p).unwrap_err()).contains("release line"));
    }

    #[test]
    fn errors_name_the_field() {
        let p = Path::new("images/x.toml");
        let err = Definition::parse("[etcd]\nversion='3.4.9'\narches=['amd64']\nchecksums='x'\ncolour='red'\n", p)
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("images/x.toml") && msg.contains("colour"), "{msg}");

        let err = Definition::parse("[etcd]\nversion='v3.4.9'\narches=['amd64']\nchecksums='x'\n", p).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("etcd.version") && msg.contains("\"3.4.9\""), "{msg}");

        let err = Definition::parse("[etcd]\nversion='3.4.9'\narches=['mips']\nchecksums='x'\n", p).unwrap_err();
        assert!(format!("{err:#}").contains("mips"));

        let err =
            Definition::parse("[etcd]\nversion='3.4.9'\narches=['amd64']\nchecksums='x'\nmirrors=['ftp://x']\n", p)
                .unwrap_err();
        assert!(format!("{err:#}").contains("etcd.mirrors"));
    }

    #[test]
    fn shipped_image_section_is_checked() {
        let path = project_root().join(DEFAULT_DEFINITION);
        let text = fs::read_to_string(&path).unwrap();
        let def = Definition::parse(&text, &path).unwrap();
        let image = def.image.as_ref().expect("images/etcd.toml has an [image] section");
        assert_eq!(image.run_as_ids().unwrap(), (10001, 10001));

        let p = Path::new("images/x.toml");
        for (from, to, want) in [
            ("run_as = \"etcd\"", "run_as = \"etcd\"\ncolour = \"red\"", "colour"),
            ("path = \"/var/lib/etcd\"", "path = \"/var/lib/../../etc\"", "outside the image"),
            ("mode = \"0700\"", "mode = \"70000\"", "between \"0000\" and \"7777\""),
            ("mode = \"0700\"", "mode = \"4755\"", "setuid"),
        ] {
            assert!(text.contains(from), "{from}");
            let msg = format!("{:#}", Definition::parse(&text.replacen(from, to, 1), p).unwrap_err());
            assert!(msg.contains("images/x.toml") && msg.contains(want), "{msg}");
        }
    }
}
