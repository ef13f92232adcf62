//! SPDX 2.3 SBOM of one image, as JSON.
//! In: the image definition, the acquisition the image was built from (its provenance), the
//! image's plan (what is inside, with SHA-256 sums) and the built oci-archive.
//! Out: the bytes of `<stem>.spdx.json`: the image (a CONTAINER package with the archive's
//! SHA-256 and its manifest digest), every etcd binary in it (version, SHA-256, license,
//! supplier, download location), the verified artifacts they came from (tarball or Debian
//! packages), and every runtime library copied in; with CONTAINS relationships.
//!
//! Deterministic: `created` is SOURCE_DATE_EPOCH, the document namespace is derived from the
//! SHA-256 of the document itself (written without it), and every list is in a fixed order.
//! Files are described as packages with SHA-256 checksums, so the document needs no SHA-1.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::acquire::{Acquired, SourceKind, OFFICIAL_BASES};
use crate::image::bake::Plan;
use crate::image::layer::Source;
use crate::image::spec::ImageSpec;
use crate::image::{oci, Built};
use crate::util::Sha256Hex;

/// Everything one image's SBOM is made from.
pub struct SbomInput<'a> {
    pub spec: &'a ImageSpec,
    pub acquired: &'a Acquired,
    pub plan: &'a Plan,
    pub built: &'a Built,
    /// File name of the oci-archive in the release.
    pub archive_name: &'a str,
    pub epoch: u64,
    /// The published advisories (those affecting the version become security references).
    pub advisories: &'a [crate::advisories::Advisory],
}

const NOASSERTION: &str = "NOASSERTION";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<Package>,
    relationships: Vec<Relationship>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Package {
    name: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    supplier: String,
    download_location: String,
    files_analyzed: bool,
    checksums: Vec<Checksum>,
    license_concluded: String,
    license_declared: String,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    primary_package_purpose: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

impl Package {
    /// A package of `purpose` with its SHA-256; every other field states nothing (NOASSERTION,
    /// or left out) until set with struct update syntax.
    fn new(name: String, spdx_id: String, purpose: &'static str, sum: &Sha256Hex) -> Package {
        Package {
            name,
            spdx_id,
            version_info: None,
            supplier: NOASSERTION.into(),
            download_location: NOASSERTION.into(),
            files_analyzed: false,
            checksums: sha256(sum),
            license_concluded: NOASSERTION.into(),
            license_declared: NOASSERTION.into(),
            copyright_text: NOASSERTION,
            source_info: None,
            primary_package_purpose: purpose,
            external_refs: Vec::new(),
            comment: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

fn sha256(sum: &Sha256Hex) -> Vec<Checksum> {
    vec![Checksum { algorithm: "SHA256", checksum_value: sum.to_string() }]
}

/// An SPDX identifier: `SPDXRef-` followed by letters, digits, `.` and `-` only.
fn spdx_id(kind: &str, name: &str) -> String {
    let clean: String = name
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    format!("SPDXRef-{kind}-{clean}")
}

/// Percent-encodes the characters a purl version or qualifier may not hold literally.
fn purl_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '~' => c.to_string(),
            other => {
                let mut buf = [0u8; 4];
                other.encode_utf8(&mut buf).bytes().map(|b| format!("%{b:02X}")).collect()
            }
        })
        .collect()
}

/// A UUID (RFC 9562 version 8, "custom") made of the first 16 bytes of `digest`.
fn uuid_of(digest: &Sha256Hex) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.0[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The Debian package name, version and architecture of a `.deb` file name
/// (`etcd-server_3.4.23-4+b4_amd64.deb`).
fn deb_parts(file: &str) -> Option<(&str, &str, &str)> {
    let stem = file.strip_suffix(".deb")?;
    let mut it = stem.splitn(3, '_');
    Some((it.next()?, it.next()?, it.next()?))
}

/// Which binaries a verified artifact delivered: a tarball or source build all of them,
/// Debian's etcd-server `etcd`, etcd-client the rest; libc6 none (it carries libraries).
fn artifact_holds(artifact: &str, single: bool, binary: &str) -> bool {
    if single {
        return true;
    }
    match deb_parts(artifact).map(|p| p.0) {
        Some("etcd-server") => binary == "etcd",
        Some("etcd-client") => binary != "etcd",
        _ => false,
    }
}

/// The SBOM of one image, as pretty JSON with a trailing newline.
pub fn document(input: &SbomInput) -> Result<Vec<u8>> {
    let prov = &input.acquired.provenance;
    let plan = input.plan;
    let version = prov.version.clone();
    let arch = prov.arch;
    let licenses = input.spec.licenses.clone();
    let (supplier, origin_note) = match prov.source {
        SourceKind::Tarball => ("Organization: etcd-io".to_string(), "the official release tarball"),
        SourceKind::Distro => ("Organization: Debian".to_string(), "Debian's packages"),
        SourceKind::Build => (NOASSERTION.to_string(), "a source build"),
        SourceKind::Dir => (NOASSERTION.to_string(), "binaries supplied on disk"),
    };
    // Where the etcd binaries can be had: the official location of the pinned tarball (its
    // SHA-256 identifies the bytes wherever they were fetched from), the git source of a
    // build, or no assertion for Debian's packages (named by purl instead).
    let binary_location = match prov.source {
        SourceKind::Tarball => prov
            .artifacts
            .keys()
            .next()
            .map(|name| format!("{}/v{version}/{name}", OFFICIAL_BASES[0]))
            .unwrap_or_else(|| NOASSERTION.to_string()),
        SourceKind::Build => prov
            .origin
            .strip_prefix("git:")
            .filter(|g| g.starts_with("https://") || g.starts_with("http://"))
            .map(|g| format!("git+{g}"))
            .unwrap_or_else(|| NOASSERTION.to_string()),
        SourceKind::Distro | SourceKind::Dir => NOASSERTION.to_string(),
    };

    let image_id = "SPDXRef-Image".to_string();
    let manifest_hex = oci::parse_digest(&input.built.stamp.digest)?.to_string();
    let repo = crate::image::bake::repo_stem(&input.spec.name);
    let mut packages = vec![Package {
        version_info: Some(version.clone()),
        source_info: Some(format!("built by cargo xtask image from etcd {version} ({origin_note}), {arch}")),
        external_refs: vec![ExternalRef {
            reference_category: "PACKAGE-MANAGER",
            reference_type: "purl",
            reference_locator: format!(
                "pkg:oci/{repo}@sha256%3A{manifest_hex}?arch={arch}&tag={}",
                purl_escape(&version)
            ),
        }],
        comment: Some(format!(
            "oci-archive {}; the checksum is the archive's, the manifest digest is sha256:{manifest_hex}",
            input.archive_name
        )),
        ..Package::new(plan.reference.clone(), image_id.clone(), "CONTAINER", &input.built.stamp.archive_sha256)
    }];
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES",
        related_spdx_element: image_id.clone(),
    }];

    // The etcd binaries, from the image's binary layers (each checked against provenance).
    let mut binaries = Vec::new();
    for layer in plan.layers.iter().skip(1) {
        for e in &layer.entries {
            let (Source::Host(_), Some(sum)) = (&e.source, e.sha256) else { continue };
            let name = e.path.rsplit('/').next().unwrap_or(&e.path).to_string();
            if prov.files.get(&name) != Some(&sum) {
                anyhow::bail!(
                    "/{} in the {arch} image is not the {name} recorded in {}/provenance.json: fetch etcd again",
                    e.path,
                    input.acquired.dir.display()
                );
            }
            let id = spdx_id("Binary", &name);
            packages.push(Package {
                version_info: Some(version.clone()),
                supplier: supplier.clone(),
                download_location: binary_location.clone(),
                license_concluded: licenses.clone(),
                license_declared: licenses.clone(),
                source_info: Some(format!("from {origin_note}: {}", origin_for_sbom(prov))),
                // The advisories that affect this version, each by its published page.
                external_refs: crate::advisories::affecting(input.advisories, &version)
                    .iter()
                    .map(|a| ExternalRef {
                        reference_category: "SECURITY",
                        reference_type: "advisory",
                        reference_locator: a.advisory.url.clone(),
                    })
                    .collect(),
                comment: Some(format!("/{} in the image", e.path)),
                ..Package::new(name.clone(), id.clone(), "APPLICATION", &sum)
            });
            relationships.push(Relationship {
                spdx_element_id: image_id.clone(),
                relationship_type: "CONTAINS",
                related_spdx_element: id.clone(),
            });
            binaries.push((name, id));
        }
    }

    // The ELF interpreter and libraries in the base layer.
    let from_sysroot = plan.runtime_root.is_some();
    let mut libraries = Vec::new();
    if let Some(base) = plan.layers.first() {
        for e in &base.entries {
            let (Source::Host(_), Some(sum)) = (&e.source, e.sha256) else { continue };
            let id = spdx_id("Library", &e.path);
            packages.push(Package {
                source_info: Some(if from_sysroot {
                    format!("from the C library package acquired with etcd for {arch}")
                } else {
                    "copied from the build machine's C library".to_string()
                }),
                ..Package::new(format!("/{}", e.path), id.clone(), "LIBRARY", &sum)
            });
            relationships.push(Relationship {
                spdx_element_id: image_id.clone(),
                relationship_type: "CONTAINS",
                related_spdx_element: id.clone(),
            });
            libraries.push(id);
        }
    }

    // The verified artifacts (tarball, .deb files) and what each delivered.
    let single = prov.artifacts.len() == 1;
    for (name, sum) in &prov.artifacts {
        let id = spdx_id("Artifact", name);
        let deb = deb_parts(name);
        let is_libc = deb.is_some_and(|p| p.0.starts_with("libc"));
        let (purpose, location, purl) = match (prov.source, deb) {
            (SourceKind::Tarball, _) => ("ARCHIVE", format!("{}/v{version}/{name}", OFFICIAL_BASES[0]), None),
            (_, Some((pkg, ver, deb_arch))) => (
                "INSTALL",
                NOASSERTION.to_string(),
                Some(format!("pkg:deb/debian/{pkg}@{}?arch={deb_arch}", purl_escape(ver))),
            ),
            _ => ("SOURCE", binary_location.clone(), None),
        };
        let license = if is_libc { NOASSERTION.to_string() } else { licenses.clone() };
        packages.push(Package {
            version_info: Some(deb.map(|p| p.1.to_string()).unwrap_or_else(|| version.clone())),
            supplier: supplier.clone(),
            download_location: location,
            license_concluded: license.clone(),
            license_declared: license,
            source_info: Some(
                "verified before use: a pinned SHA-256 or the signed index of the package archive".into(),
            ),
            external_refs: purl
                .into_iter()
                .map(|p| ExternalRef {
                    reference_category: "PACKAGE-MANAGER",
                    reference_type: "purl",
                    reference_locator: p,
                })
                .collect(),
            ..Package::new(name.clone(), id.clone(), purpose, sum)
        });
        for (bin, bin_id) in &binaries {
            if !is_libc && artifact_holds(name, single, bin) {
                relationships.push(Relationship {
                    spdx_element_id: id.clone(),
                    relationship_type: "CONTAINS",
                    related_spdx_element: bin_id.clone(),
                });
            }
        }
        if is_libc && from_sysroot {
            for lib in &libraries {
                relationships.push(Relationship {
                    spdx_element_id: id.clone(),
                    relationship_type: "CONTAINS",
                    related_spdx_element: lib.clone(),
                });
            }
        }
    }

    let ids: BTreeSet<&str> = packages.iter().map(|p| p.spdx_id.as_str()).collect();
    if ids.len() != packages.len() {
        anyhow::bail!("two SBOM packages of the {arch} image got the same SPDX identifier (an engine bug)");
    }
    relationships.sort();

    let mut doc = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: plan.stem.clone(),
        document_namespace: String::new(),
        creation_info: CreationInfo {
            created: oci::rfc3339(input.epoch)?,
            creators: vec![format!("Tool: cargo-xtask-{}", env!("CARGO_PKG_VERSION"))],
        },
        packages,
        relationships,
    };
    let unnamed = serde_json::to_vec(&doc).context("cannot serialise the SBOM")?;
    doc.document_namespace = format!("urn:uuid:{}", uuid_of(&Sha256Hex::of_bytes(&unnamed)));
    let mut bytes = serde_json::to_vec_pretty(&doc).context("cannot serialise the SBOM")?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The provenance origin without local paths: `file://` mirrors, local git sources and cache
/// hits are reduced to their file name.
fn origin_for_sbom(prov: &crate::acquire::Provenance) -> String {
    prov.origin
        .split(' ')
        .map(|part| {
            let local = part.starts_with("file://") || part.starts_with("git:/") || part.starts_with("cache:");
            if local {
                part.rsplit('/').next().unwrap_or(part).to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_purls_and_uuids_are_well_formed() {
        assert_eq!(
            spdx_id("Library", "/lib/x86_64-linux-gnu/libc.so.6"),
            "SPDXRef-Library-lib-x86-64-linux-gnu-libc.so.6"
        );
        assert_eq!(
            spdx_id("Artifact", "etcd-server_3.4.23-4+b4_amd64.deb"),
            "SPDXRef-Artifact-etcd-server-3.4.23-4-b4-amd64.deb"
        );
        assert_eq!(purl_escape("3.4.23-4+b4"), "3.4.23-4%2Bb4");
        assert_eq!(deb_parts("etcd-server_3.4.23-4+b4_amd64.deb"), Some(("etcd-server", "3.4.23-4+b4", "amd64")));
        let u = uuid_of(&Sha256Hex::of_bytes(b"x"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert!(artifact_holds("etcd-server_3.4.23-4+b4_amd64.deb", false, "etcd"));
        assert!(!artifact_holds("etcd-server_3.4.23-4+b4_amd64.deb", false, "etcdctl"));
        assert!(artifact_holds("etcd-client_3.4.23-4+b4_amd64.deb", false, "etcdctl"));
        assert!(artifact_holds("etcd-v3.4.9-linux-amd64.tar.gz", true, "etcdctl"));
    }
}
