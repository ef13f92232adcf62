//! Signing keys: `cargo xtask keygen`, and what `publish --sign-key` needs to sign with skopeo.
//! In: a passphrase (from `XTASK_SIGN_PASSPHRASE`, else typed at a terminal; never a flag).
//! Out: a sigstore (cosign-compatible) ECDSA P-256 key pair: `cosign.key`, the PKCS#8 private key
//! encrypted as cosign and skopeo read it (scrypt N=32768 r=8 p=1, NaCl secretbox, in a PEM block
//! `ENCRYPTED SIGSTORE PRIVATE KEY`), and `cosign.pub`, the public key (PEM `PUBLIC KEY`) that
//! users put into their `policy.json`.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use oci_spec::image::{Config, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, RootFsBuilder};

use crate::image::oci::{self, MediaType};
use crate::util::{display_rel, target_dir, write_atomic};

/// Where the passphrase of the signing key comes from when not typed.
pub const PASSPHRASE_ENV: &str = "XTASK_SIGN_PASSPHRASE";
/// The PEM label of an encrypted private key (cosign also reads the older COSIGN label).
const PRIVATE_PEM: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// scrypt's cost as cosign sets it: N = 2^15, r = 8, p = 1.
const SCRYPT_LOG_N: u8 = 15;

/// Generate a signing key pair for `publish --sign-key` (sigstore/cosign format)
///
/// Writes DIR/cosign.key (the private key, encrypted with a passphrase, mode 0600) and
/// DIR/cosign.pub (the public key to verify with). The passphrase comes from the environment
/// variable XTASK_SIGN_PASSPHRASE or is asked for on the terminal, twice; never from a flag.
/// An existing key is never overwritten.
#[derive(Debug, clap::Args)]
#[command(long_about)]
pub struct Keygen {
    /// Output directory [default: target/keys]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl Keygen {
    pub fn run(self) -> Result<()> {
        let out = self.out.clone().unwrap_or_else(|| target_dir().join("keys"));
        let (key, public) = (out.join("cosign.key"), out.join("cosign.pub"));
        for p in [&key, &public] {
            if p.exists() {
                bail!(
                    "{} exists: a signing key is never overwritten; move it away first, or pass another --out",
                    p.display()
                );
            }
        }
        let passphrase = passphrase(true)?;
        let (private_pem, public_pem) = generate(passphrase.as_bytes())?;
        fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
        write_atomic(&key, private_pem.as_bytes(), 0o600)?;
        write_atomic(&public, public_pem.as_bytes(), 0o644)?;
        println!("{}: private key (encrypted; keep it secret)", display_rel(&key));
        println!("{}: public key (for policy.json: sigstoreSigned, keyPath)", display_rel(&public));
        Ok(())
    }
}

/// The passphrase: `XTASK_SIGN_PASSPHRASE` when set, else asked on the terminal (twice when
/// `confirm`). Without either there is nothing to ask: an error that says what to set.
pub fn passphrase(confirm: bool) -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase for the signing key: set {PASSPHRASE_ENV} (in CI: from a secret), or run on a terminal");
    }
    let first = rpassword::prompt_password("passphrase of the signing key: ").context("cannot read the passphrase")?;
    if confirm {
        let again = rpassword::prompt_password("the same passphrase again: ").context("cannot read the passphrase")?;
        if again != first {
            bail!("the two passphrases differ: nothing was written");
        }
    }
    Ok(first)
}

/// `der` in a PEM block labelled `label`, lines of 64 and `\n` as cosign writes them.
fn pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(label, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

fn scrypt_key(passphrase: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
    let params = scrypt::Params::new(SCRYPT_LOG_N, 8, 1, 32).context("scrypt parameters")?;
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase, salt, &params, &mut key).context("scrypt")?;
    Ok(key)
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).context("no randomness from the operating system")?;
    Ok(b)
}

/// A new key pair: (encrypted private key PEM, public key PEM).
pub fn generate(passphrase: &[u8]) -> Result<(String, String)> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("cannot generate a P-256 key")?;
    let private = encrypt(&pair.serialize_der(), passphrase)?;
    Ok((private, pair.public_key_pem()))
}

/// The PKCS#8 `der` encrypted with `passphrase`, as cosign writes it.
pub fn encrypt(der: &[u8], passphrase: &[u8]) -> Result<String> {
    let salt: [u8; 32] = random()?;
    let nonce: [u8; 24] = random()?;
    let key = scrypt_key(passphrase, &salt)?;
    let cipher = XSalsa20Poly1305::new(&key.into());
    let sealed = cipher.encrypt(&nonce.into(), der).map_err(|_| anyhow::anyhow!("cannot encrypt the key"))?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let doc = serde_json::json!({
        "kdf": { "name": "scrypt", "params": { "N": 1u32 << SCRYPT_LOG_N, "r": 8, "p": 1 }, "salt": b64(&salt) },
        "cipher": { "name": "nacl/secretbox", "nonce": b64(&nonce) },
        "ciphertext": b64(&sealed),
    });
    Ok(pem(PRIVATE_PEM, doc.to_string().as_bytes()))
}

/// Reads the encrypted private key of `source`: `env:NAME` (the PEM in that environment
/// variable, e.g. a CI secret, never written to disk) or a file path.
pub fn read_key(source: &str) -> Result<String> {
    match source.strip_prefix("env:") {
        Some(name) => std::env::var(name).with_context(|| {
            format!("--sign-key {source}: the environment variable {name} is not set (the private key's PEM text)")
        }),
        None => fs::read_to_string(source)
            .with_context(|| format!("cannot read the signing key {source}: create one with `cargo xtask keygen`")),
    }
}

/// The PKCS#8 DER of the encrypted private key `source` (as [`read_key`] takes it); a wrong
/// passphrase is an error saying so.
pub fn decrypt(source: &str, passphrase: &[u8]) -> Result<Vec<u8>> {
    let text = read_key(source)?;
    let origin = source.to_string();
    let block = pem::parse(&text).with_context(|| format!("{origin}: not a PEM block"))?;
    let (label, body) = (block.tag(), block.contents());
    if label != PRIVATE_PEM && label != "ENCRYPTED COSIGN PRIVATE KEY" {
        bail!("{origin}: a {label} block, not an encrypted sigstore private key (`cargo xtask keygen` makes one)");
    }
    let doc: serde_json::Value =
        serde_json::from_slice(body).with_context(|| format!("{origin}: the encrypted key is not JSON"))?;
    let b64 = |v: &serde_json::Value, what: &str| -> Result<Vec<u8>> {
        let s = v.as_str().with_context(|| format!("{origin}: no {what}"))?;
        base64::engine::general_purpose::STANDARD.decode(s).with_context(|| format!("{origin}: {what} is not base64"))
    };
    if doc["kdf"]["name"] != "scrypt" || doc["cipher"]["name"] != "nacl/secretbox" {
        bail!(
            "{origin}: encrypted with {} and {}, expected scrypt and nacl/secretbox",
            doc["kdf"]["name"],
            doc["cipher"]["name"]
        );
    }
    let n = doc["kdf"]["params"]["N"].as_u64().unwrap_or(0);
    let (r, p) = (doc["kdf"]["params"]["r"].as_u64().unwrap_or(0), doc["kdf"]["params"]["p"].as_u64().unwrap_or(0));
    if !n.is_power_of_two() || n < 2 || r == 0 || p == 0 {
        bail!("{origin}: scrypt parameters N={n} r={r} p={p} are not valid");
    }
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r as u32, p as u32, 32)
        .with_context(|| format!("{origin}: scrypt parameters"))?;
    let salt = b64(&doc["kdf"]["salt"], "salt")?;
    let nonce = b64(&doc["cipher"]["nonce"], "nonce")?;
    if nonce.len() != 24 {
        bail!("{origin}: the nonce has {} bytes, expected 24", nonce.len());
    }
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase, &salt, &params, &mut key).context("scrypt")?;
    let cipher = XSalsa20Poly1305::new(&key.into());
    let nonce: [u8; 24] = nonce.try_into().map_err(|_| anyhow::anyhow!("{origin}: nonce"))?;
    cipher
        .decrypt(&nonce.into(), b64(&doc["ciphertext"], "ciphertext")?.as_slice())
        .map_err(|_| anyhow::anyhow!("{origin}: wrong passphrase (check {PASSPHRASE_ENV})"))
}

/// The media type of a sigstore signature layer, and the annotation that carries the signature.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The tag under which sigstore (cosign, podman, skopeo) looks for the signatures of the
/// manifest `digest`: `sha256:ab..` -> `sha256-ab...sig`.
pub fn attachment_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// What a signature says: this manifest digest is the image `reference` (cosign's simple
/// signing payload, which podman's `sigstoreSigned` policy checks).
pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
    let doc = serde_json::json!({
        "critical": {
            "identity": { "docker-reference": reference },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    doc.to_string().into_bytes()
}

/// Signs the manifest `digest` as `reference` with the PKCS#8 key `key_der` and writes the
/// sigstore attachment (a one-layer OCI image: the payload, its signature in an annotation) as
/// an OCI layout in `dir`, to be pushed to `attachment_tag(digest)`. Returns the signature's
/// size in bytes (DER).
pub fn write_attachment(key_der: &[u8], reference: &str, digest: &str, dir: &Path) -> Result<usize> {
    use rcgen::SigningKey as _;
    let pair = rcgen::KeyPair::try_from(key_der).context("the signing key is not a PKCS#8 key")?;
    let payload = payload(reference, digest);
    let signature = pair.sign(&payload).context("cannot sign")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&signature);
    let sha = crate::util::Sha256Hex::of_bytes;
    let blob = |m: MediaType, b: &[u8]| oci::descriptor(m, &sha(b), b.len() as u64);
    // cosign's attachment config: no platform, one diff_id (the payload's).
    let config = ImageConfigurationBuilder::default()
        .architecture("")
        .os("")
        .config(Config::default())
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![oci::digest_string(&sha(&payload))]).build()?)
        .build()
        .context("cannot describe the signature's config")?;
    let config = oci::to_canonical_json(&config)?;
    let layer = oci::annotate(blob(MediaType::Other(SIMPLESIGNING.into()), &payload)?, SIGNATURE_ANNOTATION, b64);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(blob(MediaType::ImageConfig, &config)?)
        .layers(vec![layer])
        .build()
        .context("cannot describe the signature's manifest")?;
    let manifest = oci::to_canonical_json(&manifest)?;
    let top =
        oci::annotate(blob(MediaType::ImageManifest, &manifest)?, oci::ANNOTATION_REF_NAME, attachment_tag(digest));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .manifests(vec![top])
        .build()
        .context("cannot describe the signature's index")?;
    let index = oci::to_canonical_json(&index)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    for blob in [&payload, &config, &manifest] {
        let name = crate::util::Sha256Hex::of_bytes(blob).to_string();
        write_atomic(&blobs.join(name), blob, 0o644)?;
    }
    write_atomic(&dir.join("oci-layout"), oci::OCI_LAYOUT.as_bytes(), 0o644)?;
    write_atomic(&dir.join("index.json"), &index, 0o644)?;
    Ok(signature.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_decrypts_with_its_passphrase_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (private, public) = generate(b"correct horse").unwrap();
        assert!(private.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"), "{private}");
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{public}");
        let path = tmp.path().join("cosign.key");
        fs::write(&path, &private).unwrap();
        let der = decrypt(path.to_str().unwrap(), b"correct horse").unwrap();
        // The PKCS#8 of a P-256 key, whose public half is the one written.
        let pair = rcgen::KeyPair::try_from(der.as_slice()).unwrap();
        assert_eq!(pair.public_key_pem(), public);
        let err = decrypt(path.to_str().unwrap(), b"wrong").unwrap_err().to_string();
        assert!(err.contains("wrong passphrase"), "{err}");
        fs::write(&path, &public).unwrap();
        let err = decrypt(path.to_str().unwrap(), b"x").unwrap_err().to_string();
        assert!(err.contains("PUBLIC KEY block"), "{err}");
    }

    #[test]
    fn an_attachment_has_cosigns_shape_and_a_signature_that_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let (private, public) = generate(b"pw").unwrap();
        let path = tmp.path().join("cosign.key");
        fs::write(&path, &private).unwrap();
        let der = decrypt(path.to_str().unwrap(), b"pw").unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let dir = tmp.path().join("sig");
        write_attachment(&der, "localhost/etcd:3.4.9", &digest, &dir).unwrap();

        let read_json =
            |p: std::path::PathBuf| -> serde_json::Value { serde_json::from_slice(&fs::read(p).unwrap()).unwrap() };
        let blob = |d: &serde_json::Value| {
            let hex = oci::parse_digest(d["digest"].as_str().unwrap()).unwrap();
            let bytes = fs::read(dir.join("blobs/sha256").join(hex.to_string())).unwrap();
            assert_eq!(crate::util::Sha256Hex::of_bytes(&bytes), hex, "a blob is named by its SHA-256");
            assert_eq!(bytes.len() as u64, d["size"].as_u64().unwrap());
            bytes
        };
        let index = read_json(dir.join("index.json"));
        assert!(index.get("mediaType").is_none(), "{index}");
        let top = &index["manifests"][0];
        assert_eq!(top["annotations"][oci::ANNOTATION_REF_NAME], attachment_tag(&digest).as_str());
        let manifest: serde_json::Value = serde_json::from_slice(&blob(top)).unwrap();
        assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], SIMPLESIGNING);
        let payload = blob(layer);
        assert_eq!(payload, super::payload("localhost/etcd:3.4.9", &digest));
        // The config cosign writes: no platform, the payload as the one diff_id.
        let config = String::from_utf8(blob(&manifest["config"])).unwrap();
        assert_eq!(
            config,
            format!(
                r#"{{"architecture":"","config":{{}},"os":"","rootfs":{{"diff_ids":["{}"],"type":"layers"}}}}"#,
                layer["digest"].as_str().unwrap()
            )
        );
        // The annotation holds a DER ECDSA P-256/SHA-256 signature of the payload blob that
        // verifies with the public key keygen wrote, and with nothing else: not over a payload
        // with one byte flipped, not flipped itself, not with another key. (cosign itself checks
        // it in the publish tests.)
        let signature = base64::engine::general_purpose::STANDARD
            .decode(layer["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap())
            .unwrap();
        assert_eq!((signature[0], signature[2]), (0x30, 0x02), "not a DER SEQUENCE of INTEGERs: {signature:?}");
        assert_eq!(verify(&public, &payload, &signature), Ok(()), "the signature does not verify with {public}");
        let mut flipped_payload = payload.clone();
        flipped_payload[payload.len() / 2] ^= 1;
        assert!(verify(&public, &flipped_payload, &signature).is_err(), "a changed payload verifies");
        let mut flipped_signature = signature.clone();
        *flipped_signature.last_mut().unwrap() ^= 1;
        assert!(verify(&public, &payload, &flipped_signature).is_err(), "a changed signature verifies");
        let (_, other_public) = generate(b"pw").unwrap();
        assert!(verify(&other_public, &payload, &signature).is_err(), "another key's public half verifies");
    }

    /// Checks the ECDSA P-256 SHA-256 `signature` (DER) of `message` against the public key PEM
    /// `public`, with x509-parser's verifier (ring's), not with the code that signed.
    fn verify(public: &str, message: &[u8], signature: &[u8]) -> Result<(), String> {
        use x509_parser::prelude::{AlgorithmIdentifier, FromDer, SubjectPublicKeyInfo};
        let block = pem::parse(public).map_err(|e| format!("public key PEM: {e}"))?;
        let (_, spki) = SubjectPublicKeyInfo::from_der(block.contents()).map_err(|e| format!("public key: {e}"))?;
        let algorithm = AlgorithmIdentifier::new(x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256, None);
        let bits = x509_parser::asn1_rs::BitString::new(0, signature);
        x509_parser::verify::verify_signature(&spki, &algorithm, &bits, message).map_err(|e| e.to_string())
    }
}
