//! The OCI image-spec documents we write and read: descriptors, manifests, indexes and the
//! image config. In: values. Out: canonical JSON bytes (struct fields in spec order, maps as
//! `BTreeMap` so keys are sorted, no whitespace) whose digests never change from run to run.
//!
//! Every document goes through [`to_canonical_json`], which sorts keys through
//! `serde_json::Value`: map types with an unstable order (`oci-spec`'s `HashMap`s) could not leak
//! into the bytes either, so that is no reason to avoid that crate (an earlier note here said it
//! was). The types below are still our own: moving to `oci-spec`'s must keep every published
//! digest, which needs a byte-for-byte comparison first (open work). Reading tolerates unknown
//! fields.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::util::Sha256Hex;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// `sha256:<hex>`.
pub fn digest_string(d: &Sha256Hex) -> String {
    format!("sha256:{d}")
}

/// Parses `sha256:<hex>`; other algorithms are rejected (the engine writes only sha256).
pub fn parse_digest(s: &str) -> Result<Sha256Hex> {
    let Some(hex) = s.strip_prefix("sha256:") else {
        bail!("digest {s:?} is not of the form sha256:<64 hex digits>");
    };
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        bail!("digest {s:?} must use lowercase hex");
    }
    hex.parse().with_context(|| format!("digest {s:?}"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An empty JSON object, the value type of `ExposedPorts` and `Volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageConfig {
    pub created: String,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<History>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// One entry of Docker's own archive index (`manifest.json`, the format `docker save` writes and
/// `docker load` before Docker 25 reads instead of `index.json`): paths inside the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags")]
    pub repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// Docker's `manifest.json` for an archive whose `index.json` names exactly one image manifest
/// with a reference name (a single-architecture image); `None` for anything else (a multi-arch
/// index, which Docker before 25 cannot load). `manifest` reads the manifest blob of a digest.
pub fn docker_manifest(
    index: &Index,
    manifest: impl Fn(&str) -> Result<Manifest>,
) -> Result<Option<Vec<DockerManifestEntry>>> {
    let [top] = index.manifests.as_slice() else { return Ok(None) };
    if top.media_type != MEDIA_MANIFEST {
        return Ok(None);
    }
    let Some(name) = top.annotations.get(ANNOTATION_REF_NAME) else { return Ok(None) };
    let m = manifest(&top.digest)?;
    let path = |d: &Descriptor| -> Result<String> { Ok(format!("blobs/sha256/{}", parse_digest(&d.digest)?)) };
    Ok(Some(vec![DockerManifestEntry {
        config: path(&m.config)?,
        repo_tags: vec![name.clone()],
        layers: m.layers.iter().map(path).collect::<Result<_>>()?,
    }]))
}

/// Canonical JSON: compact, every object's keys sorted, whatever map type the value holds.
pub fn to_canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    // Through `Value` (whose maps are sorted) so that no map type with unstable order can
    // leak into the bytes.
    let v = serde_json::to_value(value).context("cannot serialise an OCI document")?;
    serde_json::to_vec(&v).context("cannot serialise an OCI document")
}

/// RFC 3339 UTC time of a Unix timestamp, e.g. `1970-01-01T00:00:00Z` (whole seconds, as
/// `SOURCE_DATE_EPOCH` is).
pub fn rfc3339(epoch: u64) -> Result<String> {
    let seconds = i64::try_from(epoch).with_context(|| format!("timestamp {epoch} is out of range"))?;
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .with_context(|| format!("timestamp {epoch} is out of range"))?
        .format(&time::format_description::well_known::Rfc3339)
        .with_context(|| format!("cannot format timestamp {epoch} as RFC 3339"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_of_any_map_type() {
        // A HashMap with many keys iterates in a random order; the bytes must not.
        let map: std::collections::HashMap<String, u32> = (0..64).map(|i| (format!("k{i:02}"), i)).collect();
        let bytes = to_canonical_json(&map).unwrap();
        let sorted: BTreeMap<String, u32> = map.into_iter().collect();
        assert_eq!(bytes, serde_json::to_vec(&sorted).unwrap());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799).unwrap(), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn canonical_json_sorts_maps_and_skips_empties() {
        let mut cfg = RunConfig::default();
        cfg.labels.insert("b".into(), "2".into());
        cfg.labels.insert("a".into(), "1".into());
        cfg.exposed_ports.insert("2380/tcp".into(), Empty {});
        cfg.exposed_ports.insert("2379/tcp".into(), Empty {});
        let s = String::from_utf8(to_canonical_json(&cfg).unwrap()).unwrap();
        assert_eq!(s, r#"{"ExposedPorts":{"2379/tcp":{},"2380/tcp":{}},"Labels":{"a":"1","b":"2"}}"#);
    }

    #[test]
    fn digests_parse_strictly() {
        let d = Sha256Hex::of_bytes(b"x");
        assert_eq!(parse_digest(&digest_string(&d)).unwrap(), d);
        assert!(parse_digest("sha512:00").is_err());
        assert!(parse_digest(&digest_string(&d).to_uppercase().replace("SHA256", "sha256")).is_err());
    }
}
