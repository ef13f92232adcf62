//! Image definitions: `images/*.toml`, parsed strictly (unknown fields are errors).
//! In: a TOML file. Out: a checked [`Definition`] that every stage reads.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::util::{project_root, Arch};
pub use crate::version::{check_version, release_line, version_triple, ForbiddenRange};

/// The default definition file, relative to the project root.
pub const DEFAULT_DEFINITION: &str = "images/etcd.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub etcd: EtcdSpec,
    /// What the OCI image contains and how it runs (read by `cargo xtask image`).
    #[serde(default)]
    pub image: Option<crate::image::spec::ImageSpec>,
    /// Which release a running cluster is upgraded to, and which releases no cluster may run
    /// (read by [`crate::upgrade::check_upgrade`] and `smoke --scenario upgrade`).
    #[serde(default)]
    pub upgrade: Option<UpgradeSpec>,
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
    /// The Debian suite whose `etcd-server`/`etcd-client` provide each release line ("3.5") when
    /// etcd comes from Debian (`--source debian`, or `auto`'s fallback): [`DEBIAN_HOST_SUITE`]
    /// for the host's own apt configuration, or a Debian codename ("trixie") served from private
    /// package lists (see [`Definition::debian_suite`]).
    #[serde(default)]
    pub debian_suites: BTreeMap<String, String>,
}

/// The value of `etcd.debian_suites` that means "the host's own apt configuration".
pub const DEBIAN_HOST_SUITE: &str = "host";

/// Where Debian's packages of one release line come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebianSuite {
    /// The host's own apt configuration and package lists (whatever suite the host runs).
    Host,
    /// A Debian suite by codename ("trixie"), served from private package lists unless it is
    /// the host's own suite.
    Named(String),
}

/// `[upgrade]`: the release `smoke --scenario upgrade` moves a cluster to, and the releases no
/// cluster may be upgraded to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSpec {
    /// The version a running cluster is upgraded to (e.g. "3.5.16").
    pub to: String,
    /// Releases no cluster may be upgraded to, as inclusive ranges.
    #[serde(default)]
    pub forbidden: Vec<ForbiddenRange>,
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
            check_release_line(line).context("field etcd.supported_arches")?;
        }
        for (line, suite) in &self.etcd.debian_suites {
            check_release_line(line).with_context(|| format!("field etcd.debian_suites: key {line:?}"))?;
            check_suite(suite).with_context(|| format!("field etcd.debian_suites.\"{line}\""))?;
        }
        for m in &self.etcd.mirrors {
            check_mirror_url(m).context("field etcd.mirrors")?;
        }
        if let Some(image) = &self.image {
            image.check().context("section [image]")?;
        }
        if let Some(upgrade) = &self.upgrade {
            self.check_upgrade_section(upgrade)?;
        }
        Ok(())
    }

    fn check_upgrade_section(&self, upgrade: &UpgradeSpec) -> Result<()> {
        check_version(&upgrade.to).context("field upgrade.to")?;
        for (i, f) in upgrade.forbidden.iter().enumerate() {
            let at = format!("upgrade.forbidden[{i}]");
            check_version(&f.from).with_context(|| format!("field {at}.from"))?;
            check_version(&f.to).with_context(|| format!("field {at}.to"))?;
            if release_line(&f.from) != release_line(&f.to) {
                bail!(
                    "field {at}: from {} and to {} lie in different release lines; give one range per release line",
                    f.from,
                    f.to
                );
            }
            if version_triple(&f.from) > version_triple(&f.to) {
                bail!("field {at}: from {} is later than to {}; swap them", f.from, f.to);
            }
            if f.reason.trim().is_empty() {
                bail!(
                    "field {at}.reason is empty: say why no cluster may run {}..{} and what to use instead",
                    f.from,
                    f.to
                );
            }
        }
        // The shipped target must itself be an allowed upgrade of the shipped release.
        crate::version::check_upgrade_step(&self.etcd.version, &upgrade.to, &upgrade.forbidden, &self.path)
            .with_context(|| {
                format!(
                    "field upgrade.to ({}) is no allowed upgrade of etcd.version ({})",
                    upgrade.to, self.etcd.version
                )
            })?;
        Ok(())
    }

    /// Where Debian's packages of `version`'s release line come from (`etcd.debian_suites`).
    /// A release line missing there is an error, never a guess: another suite would ship
    /// another release line.
    pub fn debian_suite(&self, version: &str) -> Result<DebianSuite> {
        check_version(version)?;
        let line = release_line(version);
        let Some(suite) = self.etcd.debian_suites.get(&line) else {
            bail!(
                "{}: field etcd.debian_suites has no entry for etcd {line} (of {version}): add \"{line}\" = \"<suite>\", \
                 the Debian suite whose etcd-server is a {line}.x release (\"{DEBIAN_HOST_SUITE}\" for this machine's own apt sources)",
                self.path.display()
            );
        };
        Ok(if suite == DEBIAN_HOST_SUITE { DebianSuite::Host } else { DebianSuite::Named(suite.clone()) })
    }

    /// The environment etcd `version` needs to run at all on `arch`: `ETCD_UNSUPPORTED_ARCH=<arch>`
    /// where `etcd.supported_arches` says its release line does not support `arch` (etcd 3.4 on
    /// arm64 exits 1 without it). The image config, the portable unit and host bundles carry it.
    /// It is not a flag's variable, so it never conflicts with a flag a user passes.
    pub fn runtime_env(&self, version: &str, arch: Arch) -> Result<BTreeMap<String, String>> {
        check_version(version)?;
        let line = release_line(version);
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

/// A release line as the definition's tables key them: `MAJOR.MINOR` ("3.5").
fn check_release_line(line: &str) -> Result<()> {
    let parts: Vec<&str> = line.split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        bail!("{line:?} is not a release line like \"3.4\"");
    }
    Ok(())
}

/// A Debian suite: `host` or a codename (lowercase letters, e.g. "trixie").
fn check_suite(suite: &str) -> Result<()> {
    if suite == DEBIAN_HOST_SUITE {
        return Ok(());
    }
    if suite.is_empty() || !suite.bytes().all(|b| b.is_ascii_lowercase()) {
        bail!(
            "{suite:?} is not a Debian codename (lowercase letters, e.g. \"trixie\"; not \"stable\" or \"13\", which move) \
             nor \"{DEBIAN_HOST_SUITE}\" (this machine's own apt sources)"
        );
    }
    if matches!(suite, "stable" | "testing" | "unstable" | "oldstable" | "oldoldstable") {
        bail!("{suite:?} is an alias that moves with each Debian release: name the codename (e.g. \"trixie\")");
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
    fn debian_suites_are_data_per_release_line() {
        let def = Definition::load(&project_root().join(DEFAULT_DEFINITION)).unwrap();
        assert_eq!(def.debian_suite("3.4.9").unwrap(), DebianSuite::Host);
        assert_eq!(def.debian_suite("3.5.16").unwrap(), DebianSuite::Named("trixie".into()));
        let msg = format!("{:#}", def.debian_suite("3.9.0").unwrap_err());
        assert!(msg.contains("etcd.debian_suites") && msg.contains("\"3.9\""), "{msg}");

        let p = Path::new("images/x.toml");
        let base = "[etcd]\nversion='3.4.9'\narches=['amd64']\nchecksums='x'\n[etcd.debian_suites]\n";
        for (suites, want) in [
            ("'3.5.16' = 'trixie'\n", "release line"),
            ("'3.5' = 'stable'\n", "moves"),
            ("'3.5' = 'Trixie 13'\n", "codename"),
            ("'3.5' = ''\n", "codename"),
        ] {
            let msg = format!("{:#}", Definition::parse(&format!("{base}{suites}"), p).unwrap_err());
            assert!(msg.contains("images/x.toml") && msg.contains("etcd.debian_suites") && msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn the_upgrade_section_is_checked() {
        let def = Definition::load(&project_root().join(DEFAULT_DEFINITION)).unwrap();
        let upgrade = def.upgrade.as_ref().expect("images/etcd.toml has an [upgrade] section");
        assert_eq!(upgrade.to, "3.5.16");
        assert!(upgrade.forbidden.iter().any(|r| r.contains("3.5.0") && r.contains("3.5.2") && !r.contains("3.5.3")));

        let p = Path::new("images/x.toml");
        let base = "[etcd]\nversion='3.4.9'\narches=['amd64']\nchecksums='x'\n";
        let range = |from: &str, to: &str, reason: &str| {
            format!("[[upgrade.forbidden]]\nfrom='{from}'\nto='{to}'\nreason='{reason}'\n")
        };
        for (upgrade, want) in [
            ("[upgrade]\nto='3.5.16'\ncolour='red'\n".to_string(), "colour"),
            ("[upgrade]\nto='v3.5.16'\n".to_string(), "upgrade.to"),
            ("[upgrade]\nto='3.6.0'\n".to_string(), "one minor version at a time"),
            ("[upgrade]\nto='3.4.9'\n".to_string(), "no upgrade"),
            (format!("[upgrade]\nto='3.5.16'\n{}", range("3.5.2", "3.5.0", "x")), "swap"),
            (format!("[upgrade]\nto='3.5.16'\n{}", range("3.4.0", "3.5.2", "x")), "different release lines"),
            (format!("[upgrade]\nto='3.5.16'\n{}", range("3.5.0", "3.5.2", " ")), "upgrade.forbidden[0].reason"),
            (format!("[upgrade]\nto='3.5.1'\n{}", range("3.5.0", "3.5.2", "use 3.5.3")), "forbidden"),
        ] {
            let msg = format!("{:#}", Definition::parse(&format!("{base}{upgrade}"), p).unwrap_err());
            assert!(msg.contains("images/x.toml") && msg.contains(want), "{upgrade}: {msg}");
        }
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(version_triple("3.5.16"), Some((3, 5, 16)));
        assert_eq!(version_triple("3.5.0-rc.1"), Some((3, 5, 0)));
        assert_eq!(version_triple("3.5"), None);
        assert!(version_triple("3.5.10") > version_triple("3.5.9"));
        assert_eq!(release_line("3.10.2"), "3.10");
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
