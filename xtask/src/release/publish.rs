//! Publishing: `cargo xtask publish --registry HOST[:PORT]/REPO`.
//! In: the image definition, verified etcd per architecture (as for `image`), a registry
//! destination, the registry credentials skopeo finds (`skopeo login`, `REGISTRY_AUTH_FILE`).
//! Out: the image pushed as `HOST[:PORT]/REPO:<etcd version>`: the multi-arch index with every
//! architecture (or the one image when only one is built), digests preserved, and the digest
//! the registry reports checked against the one built here. With `--sign-key`, every pushed
//! manifest (the index, and each architecture's image, also tagged `<version>-<arch>`) is signed
//! by skopeo with the sigstore key and the signature stored in the registry as an attachment.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::acquire::SourcePolicy;
use crate::definition::Definition;
use crate::image::{self, BuildArgs};
use crate::util::{display_rel, target_dir, temp_sibling, Arch, StagingDir};

/// Push the image (every architecture, under the etcd version tag) to a registry
#[derive(Debug, clap::Args)]
pub struct Publish {
    /// Destination repository, e.g. ghcr.io/example/etcd or 127.0.0.1:5000/etcd; the tag is
    /// always the etcd version inside
    #[arg(long, value_name = "HOST[:PORT]/REPO")]
    pub registry: String,
    /// Architecture to push; repeat for several [default: the definition's etcd.arches]
    #[arg(long = "arch", value_name = "ARCH")]
    pub arches: Vec<Arch>,
    /// Where etcd may come from when it is not acquired yet
    #[arg(long, default_value_t, value_name = "SOURCE")]
    pub source: SourcePolicy,
    /// Image build directory [default: target/images]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Talk plain HTTP or unverified TLS to the registry (a registry on loopback)
    #[arg(long)]
    pub insecure: bool,
    /// Sign every pushed manifest with this sigstore private key: a file (`cargo xtask keygen`
    /// makes one) or env:NAME, the key's text in that environment variable (a CI secret). Its
    /// passphrase comes from XTASK_SIGN_PASSPHRASE or the terminal
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<String>,
}

/// The decrypted signing key, and a private directory for the signatures' layouts (removed on
/// drop).
struct Signing {
    dir: StagingDir,
    key_der: Vec<u8>,
}

impl Signing {
    fn prepare(key: &str, near: &std::path::Path) -> Result<Signing> {
        let passphrase = super::sign::passphrase(false)?;
        // A wrong passphrase is said here, before anything is pushed.
        let key_der = super::sign::decrypt(key, passphrase.as_bytes())?;
        let dir = StagingDir::private_beside(&near.with_extension("signatures"))?;
        Ok(Signing { dir, key_der })
    }
}

/// A parsed `--registry`: the host (with port) and the repository path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub repo: String,
}

impl Destination {
    /// Parses `HOST[:PORT]/REPO`; every error names the flag and what to write instead.
    pub fn parse(s: &str) -> Result<Self> {
        let hint = "expected --registry HOST[:PORT]/REPO, e.g. ghcr.io/example/etcd or 127.0.0.1:5000/etcd";
        let (host, repo) = s.split_once('/').with_context(|| format!("--registry {s:?} has no repository: {hint}"))?;
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        let host_ok = !name.is_empty()
            && name.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !host_ok {
            bail!("--registry {s:?}: {host:?} is not a host name or IPv4 address: {hint}");
        }
        if let Some(p) = port {
            if p.parse::<u16>().map_or(true, |n| n == 0) {
                bail!("--registry {s:?}: port {p:?} is not a number from 1 to 65535: {hint}");
            }
        }
        if repo.contains(':') || repo.contains('@') {
            bail!("--registry {s:?}: leave out the tag or digest, the tag is always the etcd version: {hint}");
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !repo.split('/').all(component_ok) {
            bail!(
                "--registry {s:?}: repository {repo:?} must be lowercase letters, digits and . _ - between slashes: {hint}"
            );
        }
        Ok(Destination { host: host.to_string(), repo: repo.to_string() })
    }

    /// `HOST[:PORT]/REPO:TAG`.
    pub fn reference(&self, tag: &str) -> String {
        format!("{}/{}:{tag}", self.host, self.repo)
    }
}

impl Publish {
    pub fn run(self) -> Result<()> {
        let dest = Destination::parse(&self.registry)?;
        let def = Definition::load_default()?;
        let args = BuildArgs {
            arches: if self.arches.is_empty() { def.etcd.arches.clone() } else { self.arches.clone() },
            all_arches: false,
            out: Some(self.out.clone().unwrap_or_else(|| target_dir().join("images"))),
            load: false,
            source: self.source,
            etcd_dir: vec![],
            force: false,
            version: None,
        };
        let builds = image::build_images(&def, &args)?;
        // The multi-arch index when there is one, else the single image.
        let top = builds
            .iter()
            .find(|b| b.arch.is_none())
            .or_else(|| builds.first())
            .context("no image was built, nothing to publish")?;
        let version = top
            .stamp
            .reference
            .rsplit_once(':')
            .map(|(_, v)| v.to_string())
            .with_context(|| format!("image reference {:?} has no tag (an engine bug)", top.stamp.reference))?;
        let target = dest.reference(&version);
        eprintln!("publish: pushing {} ({}) to {target}", display_rel(&top.layout), top.stamp.digest);

        let sh = Shell::new().context("cannot start a shell")?;
        let signing = match &self.sign_key {
            Some(key) => Some(Signing::prepare(key, &top.layout)?),
            None => None,
        };
        let tls: Vec<&str> = if self.insecure { vec!["--dest-tls-verify=false"] } else { vec![] };
        let tls_ref = &tls;
        let digest_file = temp_sibling(&top.layout.with_extension("pushed-digest"));
        let src = format!("oci:{}", top.layout.display());
        let dst = format!("docker://{target}");
        let t = std::time::Instant::now();
        let pushed = cmd!(
            sh,
            "skopeo copy --all --preserve-digests --retry-times 2 {tls_ref...} --digestfile {digest_file} {src} {dst}"
        )
        .quiet()
        .run()
        .with_context(|| {
            format!(
                "cannot push to {target}: check that the registry is reachable and that you are logged in \
                     (skopeo login {}); for a plain-HTTP registry on loopback add --insecure",
                dest.host
            )
        });
        let digest = fs::read_to_string(&digest_file);
        let _ = fs::remove_file(&digest_file);
        pushed?;
        let digest = digest.with_context(|| format!("skopeo wrote no digest file for {target}"))?;
        let digest = digest.trim();
        if digest != top.stamp.digest {
            bail!(
                "the registry holds {target} as {digest}, but the image built here is {}: the registry rewrote it",
                top.stamp.digest
            );
        }
        eprintln!("publish: {target} pushed ({:.2} s)", t.elapsed().as_secs_f64());
        println!("pushed {target}@{digest}");
        if let Some(signing) = &signing {
            // Every manifest pushed: the index (or the one image) and each architecture's image,
            // each signed as the version tag it is reachable under.
            let mut digests = vec![top.stamp.digest.clone()];
            if top.arch.is_none() {
                digests.extend(builds.iter().filter(|b| b.arch.is_some()).map(|b| b.stamp.digest.clone()));
            }
            for d in digests {
                let t = std::time::Instant::now();
                let layout = signing.dir.path().join(d.replace(':', "-"));
                let size = super::sign::write_attachment(&signing.key_der, &target, &d, &layout)?;
                let src = format!("oci:{}", layout.display());
                let tag = super::sign::attachment_tag(&d);
                let dst = format!("docker://{}", dest.reference(&tag));
                let tls = &tls;
                cmd!(sh, "skopeo copy --preserve-digests --retry-times 2 {tls...} {src} {dst}")
                    .quiet()
                    .run()
                    .with_context(|| format!("cannot push the signature of {d} to {dst}"))?;
                eprintln!(
                    "publish: signed {target}@{d} ({size}-byte ECDSA P-256 signature, stored as :{tag}, {:.2} s)",
                    t.elapsed().as_secs_f64()
                );
            }
            println!("signed {target}: verify with a policy.json requiring sigstoreSigned by your public key");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_errors_name_the_fix() {
        let d = Destination::parse("127.0.0.1:5000/test/etcd").unwrap();
        assert_eq!(d.host, "127.0.0.1:5000");
        assert_eq!(d.reference("3.4.23"), "127.0.0.1:5000/test/etcd:3.4.23");
        assert_eq!(Destination::parse("ghcr.io/example/etcd").unwrap().repo, "example/etcd");
        for (bad, says) in [
            ("etcd", "has no repository"),
            ("host:99999/etcd", "port"),
            ("host/etcd:3.4.9", "leave out the tag"),
            ("host/Etcd", "lowercase"),
            ("ho st/etcd", "not a host name"),
            ("host/etcd/", "lowercase"),
        ] {
            let err = format!("{:#}", Destination::parse(bad).unwrap_err());
            assert!(err.contains(says) && err.contains("--registry"), "{bad}: {err}");
        }
    }
}
