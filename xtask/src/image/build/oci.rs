//! The OCI image-spec documents we write and read. The types are `oci-spec`'s (descriptor,
//! manifest, index, image configuration, platform, digest); this module adds what the engine
//! needs around them: canonical JSON bytes, our SHA-256 values as OCI digests and back, the
//! platform of an [`Arch`], Docker's archive index, and RFC 3339 times.
//!
//! Every document goes through [`to_canonical_json`], which sorts keys through
//! `serde_json::Value` (compact, `preserve_order` off). `oci-spec` keeps annotations, labels,
//! exposed ports and volumes in `HashMap`s whose iteration order changes from run to run; the
//! detour through `Value` is what keeps the bytes, and so the digests, fixed. The test
//! `documents_keep_their_bytes` pins a config, a manifest and two indexes byte for byte (the
//! bytes the engine wrote with its own types before it moved to `oci-spec`). Reading tolerates
//! unknown fields; a malformed digest fails the whole document, with `oci-spec`'s reason.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use oci_spec::image::{DigestAlgorithm, PlatformBuilder};
use serde::{Deserialize, Serialize};

pub use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Platform, ANNOTATION_REF_NAME,
};

use crate::util::{Arch, Sha256Hex};

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

/// Our SHA-256 as an OCI digest.
pub fn digest(d: &Sha256Hex) -> Result<Digest> {
    Digest::from_str(&digest_string(d)).with_context(|| format!("sha256:{d} is not an OCI digest"))
}

/// The SHA-256 of an OCI digest; another algorithm is an error naming it.
pub fn sha256_of(d: &Digest) -> Result<Sha256Hex> {
    if *d.algorithm() != DigestAlgorithm::Sha256 {
        bail!("digest {d} uses {}; the engine reads sha256 only", d.algorithm());
    }
    parse_digest(d.as_ref())
}

/// A descriptor of `size` bytes with SHA-256 `d`, without platform or annotations.
pub fn descriptor(media_type: MediaType, d: &Sha256Hex, size: u64) -> Result<Descriptor> {
    Ok(Descriptor::new(media_type, size, digest(d)?))
}

/// `desc` with the annotation `key` set to `value`.
pub fn annotate(mut desc: Descriptor, key: &str, value: impl Into<String>) -> Descriptor {
    let mut all: HashMap<String, String> = desc.annotations().clone().unwrap_or_default();
    all.insert(key.to_string(), value.into());
    desc.set_annotations(Some(all));
    desc
}

/// The OCI platform of an etcd build for `arch` on Linux: arm64 carries the variant `v8`, as
/// the image-spec recommends and registries expect.
pub fn platform(arch: Arch) -> Result<Platform> {
    let builder = PlatformBuilder::default().architecture(arch.as_str()).os("linux");
    let builder = if arch == Arch::Arm64 { builder.variant("v8") } else { builder };
    builder.build().with_context(|| format!("cannot describe the platform linux/{arch}"))
}

/// The reference name annotation of a descriptor (`org.opencontainers.image.ref.name`).
pub fn ref_name(desc: &Descriptor) -> Option<&String> {
    desc.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME))
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
    index: &ImageIndex,
    manifest: impl Fn(&Digest) -> Result<ImageManifest>,
) -> Result<Option<Vec<DockerManifestEntry>>> {
    let [top] = index.manifests().as_slice() else { return Ok(None) };
    if *top.media_type() != MediaType::ImageManifest {
        return Ok(None);
    }
    let Some(name) = ref_name(top) else { return Ok(None) };
    let m = manifest(top.digest())?;
    let path = |d: &Descriptor| -> Result<String> { Ok(format!("blobs/sha256/{}", sha256_of(d.digest())?)) };
    Ok(Some(vec![DockerManifestEntry {
        config: path(m.config())?,
        repo_tags: vec![name.clone()],
        layers: m.layers().iter().map(path).collect::<Result<_>>()?,
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
    use oci_spec::image::{
        ConfigBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder,
        RootFsBuilder,
    };

    use super::*;
    use std::collections::BTreeMap;

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
    fn digests_parse_strictly() {
        let d = Sha256Hex::of_bytes(b"x");
        assert_eq!(parse_digest(&digest_string(&d)).unwrap(), d);
        assert_eq!(sha256_of(&digest(&d).unwrap()).unwrap(), d);
        assert!(parse_digest("sha512:00").is_err());
        assert!(parse_digest(&digest_string(&d).to_uppercase().replace("SHA256", "sha256")).is_err());
        let sha512 = Digest::from_str(&format!("sha512:{}", "ab".repeat(64))).unwrap();
        assert!(sha256_of(&sha512).unwrap_err().to_string().contains("sha512"));
    }

    /// The documents the engine writes, built the way bake and plan build them, keep the bytes
    /// its own types wrote before it moved to `oci-spec` (pinned below, with their digests). A
    /// change in `oci-spec`'s serialisation shows up here, not in a published digest.
    #[test]
    fn documents_keep_their_bytes() {
        let d = |s: &[u8]| Sha256Hex::of_bytes(s);
        let created = rfc3339(1_700_000_000).unwrap();
        let run = ConfigBuilder::default()
            .user("10001:10001")
            .exposed_ports(vec!["2380/tcp".to_string(), "2379/tcp".to_string()])
            .env(vec!["PATH=/usr/local/bin".to_string(), "ETCD_DATA_DIR=/var/lib/etcd".to_string()])
            .entrypoint(vec!["/usr/local/bin/etcd".to_string()])
            .volumes(vec!["/var/lib/etcd".to_string(), "/etc/etcd/pki".to_string()])
            .working_dir("/var/lib/etcd")
            .labels(HashMap::from([
                ("org.opencontainers.image.version".to_string(), "3.4.9".to_string()),
                ("b".to_string(), "2".to_string()),
            ]))
            .stop_signal("SIGTERM")
            .build()
            .unwrap();
        let history = |by: &str| HistoryBuilder::default().created(created.clone()).created_by(by).build().unwrap();
        let config = ImageConfigurationBuilder::default()
            .created(created.clone())
            .architecture("arm64")
            .os("linux")
            .config(run)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![digest_string(&d(b"l0")), digest_string(&d(b"l1"))])
                    .build()
                    .unwrap(),
            )
            .history(vec![history("base"), history("etcd")])
            .build()
            .unwrap();
        let config_bytes = to_canonical_json(&config).unwrap();
        assert_eq!(
            String::from_utf8(config_bytes.clone()).unwrap(),
            r#"{"architecture":"arm64","config":{"Entrypoint":["/usr/local/bin/etcd"],"Env":["PATH=/usr/local/bin","ETCD_DATA_DIR=/var/lib/etcd"],"ExposedPorts":{"2379/tcp":{},"2380/tcp":{}},"Labels":{"b":"2","org.opencontainers.image.version":"3.4.9"},"StopSignal":"SIGTERM","User":"10001:10001","Volumes":{"/etc/etcd/pki":{},"/var/lib/etcd":{}},"WorkingDir":"/var/lib/etcd"},"created":"2023-11-14T22:13:20Z","history":[{"created":"2023-11-14T22:13:20Z","created_by":"base"},{"created":"2023-11-14T22:13:20Z","created_by":"etcd"}],"os":"linux","rootfs":{"diff_ids":["sha256:48dbc45a6738318c9e35db13781199f18495e5a61272ff94b60b30b8079da5c1","sha256:2804bad6fe94a55f18b2b37e300919a5fd517b95aa81e95db574c0ba069a3740"],"type":"layers"}}"#
        );

        let blob = |m: MediaType, b: &[u8]| descriptor(m, &d(b), b.len() as u64).unwrap();
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(blob(MediaType::ImageConfig, &config_bytes))
            .layers(vec![blob(MediaType::ImageLayerGzip, b"g0"), blob(MediaType::ImageLayerGzip, b"g1")])
            .annotations(HashMap::from([
                ("org.opencontainers.image.version".to_string(), "3.4.9".to_string()),
                ("org.opencontainers.image.created".to_string(), created.clone()),
            ]))
            .build()
            .unwrap();
        let manifest_bytes = to_canonical_json(&manifest).unwrap();
        assert_eq!(
            String::from_utf8(manifest_bytes.clone()).unwrap(),
            r#"{"annotations":{"org.opencontainers.image.created":"2023-11-14T22:13:20Z","org.opencontainers.image.version":"3.4.9"},"config":{"digest":"sha256:4274877d705af51afbb1ce2205ba4da4969c8f4ec421cc69af696e00cfc41503","mediaType":"application/vnd.oci.image.config.v1+json","size":718},"layers":[{"digest":"sha256:f21b0ef89d8ee5daf6ba6cd441652a647229941e85b1537b5c35ede6b4d519a8","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":2},{"digest":"sha256:711430f6164e93803d93428bc1fab80f41e213bb197689307de8606d437c3038","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":2}],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}"#
        );

        let with_platform = |mut desc: Descriptor, arch| {
            desc.set_platform(Some(platform(arch).unwrap()));
            desc
        };
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![
                with_platform(blob(MediaType::ImageManifest, b"amd"), Arch::Amd64),
                with_platform(blob(MediaType::ImageManifest, &manifest_bytes), Arch::Arm64),
            ])
            .build()
            .unwrap();
        let index_bytes = to_canonical_json(&index).unwrap();
        assert_eq!(
            String::from_utf8(index_bytes.clone()).unwrap(),
            r#"{"manifests":[{"digest":"sha256:240389f4b730bad41f218a56c250ee7d82f42297ce7b9d0b6eb4f1cb3282c480","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"amd64","os":"linux"},"size":3},{"digest":"sha256:e5b3ac3612d48a9a315a4f7b7c59be5719edb0ec00272d51fb9d9c3445ce312d","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"arm64","os":"linux","variant":"v8"},"size":668}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#
        );

        let top = annotate(blob(MediaType::ImageIndex, &index_bytes), ANNOTATION_REF_NAME, "localhost/etcd:3.4.9");
        let outer = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![top])
            .build()
            .unwrap();
        assert_eq!(
            String::from_utf8(to_canonical_json(&outer).unwrap()).unwrap(),
            r#"{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"localhost/etcd:3.4.9"},"digest":"sha256:4553b9303720ea5a7f14fb4b067e52cd6e2c2b569785dbcddbd02b1923f37ccf","mediaType":"application/vnd.oci.image.index.v1+json","size":504}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#
        );
    }
}
