//! The client side of etcd's JSON gateway (`/v3/kv/put`, `/v3/kv/range`) over mutual TLS: the
//! identity as files (re-read by the load when they change) and a [`Gateway`] that makes one
//! request with a bounded time, reading etcd's own reason from a refused answer. Every answer
//! carries the store's revision, which the load records for the linearizability check.
//! In: an endpoint and the identity's files. Out: values, revisions, or etcd's reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The client identity, as files (the ones etcdctl would be given).
#[derive(Debug, Clone)]
pub struct Identity {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    pub fn in_dir(dir: &Path) -> Self {
        Identity { ca: dir.join("ca.crt"), cert: dir.join("client.crt"), key: dir.join("client.key") }
    }

    /// The files' modification times: a change means the identity must be loaded again.
    pub(crate) fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key].iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }

    /// ureq's TLS configuration: the CA bundle as the only roots, the certificate chain and key
    /// as the client's own. Each file must hold what its role needs, and the key must be the
    /// certificate's, or the error names the files.
    pub fn tls_config(&self) -> Result<ureq::tls::TlsConfig> {
        use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig, TlsProvider};
        let read = |path: &Path| -> Result<(String, Vec<PemItem<'static>>)> {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let items = ureq::tls::parse_pem(text.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: not PEM", path.display()))?;
            Ok((text, items))
        };
        let certs = |path: &Path| -> Result<(String, Vec<ureq::tls::Certificate<'static>>)> {
            let (text, items) = read(path)?;
            let certs: Vec<_> = items
                .into_iter()
                .filter_map(|item| match item {
                    PemItem::Certificate(c) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                bail!("{}: no PEM certificate in it", path.display());
            }
            Ok((text, certs))
        };
        let (_, roots) = certs(&self.ca)?;
        let (chain_text, chain) = certs(&self.cert)?;
        let (key_text, key_items) = read(&self.key)?;
        let key = key_items
            .into_iter()
            .find_map(|item| match item {
                PemItem::PrivateKey(k) => Some(k),
                _ => None,
            })
            .with_context(|| format!("{}: no PEM private key in it", self.key.display()))?;
        let leaf = crate::pki::cert::parse_certs(&chain_text)
            .with_context(|| format!("{}: not a certificate", self.cert.display()))?;
        let matches = leaf
            .first()
            .map(|leaf| crate::pki::cert::key_matches(&key_text, leaf))
            .transpose()
            .with_context(|| format!("{}: unusable private key", self.key.display()))?;
        if matches != Some(true) {
            bail!(
                "{} and {} do not make a client identity: the key is not the certificate's",
                self.cert.display(),
                self.key.display()
            );
        }
        Ok(TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::new_with_certs(&roots))
            .client_cert(Some(ClientCert::new_with_certs(&chain, key)))
            .build())
    }
}

/// An HTTPS client of etcd's JSON gateway with one identity.
pub struct Gateway {
    agent: ureq::Agent,
}

impl Gateway {
    pub fn new(identity: &Identity, timeout: Duration) -> Result<Self> {
        // ureq's overall timeout does not cover connecting (30 s by default): a SYN to a stopped
        // member's published port may go unanswered, so connecting gets its own bound.
        let agent = ureq::Agent::config_builder()
            .tls_config(identity.tls_config()?)
            .timeout_connect(Some(timeout.min(Duration::from_secs(1))))
            .timeout_global(Some(timeout))
            // etcd's answer to a refused request carries its reason: read it, not a bare status.
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Gateway { agent })
    }

    fn call(&self, endpoint: &str, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{endpoint}{path}");
        let mut resp = match self.agent.post(&url).content_type("application/json").send(body.to_string()) {
            Ok(resp) => resp,
            Err(e) => bail!("{url}: {e}"),
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().with_context(|| format!("{url}: cannot read the answer"))?;
        if status != 200 {
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").or_else(|| v.get("message")).and_then(|e| e.as_str()).map(String::from))
                .unwrap_or(text);
            bail!("{url}: HTTP {status}: {}", reason.trim())
        }
        serde_json::from_str(&text).with_context(|| format!("{url}: the answer is not JSON: {text:?}"))
    }

    /// A put; returns the store's revision after it.
    pub fn put(&self, endpoint: &str, key: &str, value: &str) -> Result<Option<i64>> {
        self.call(endpoint, "/v3/kv/put", serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)}))
            .map(|v| revision(&v))
    }

    /// A linearizable read of one key (the gateway's default), `None` when absent.
    pub fn get(&self, endpoint: &str, key: &str) -> Result<Option<String>> {
        self.get_at(endpoint, key).map(|(v, _)| v)
    }

    /// [`Gateway::get`], with the store's revision the answer was read at.
    pub fn get_at(&self, endpoint: &str, key: &str) -> Result<(Option<String>, Option<i64>)> {
        let v = self.call(endpoint, "/v3/kv/range", serde_json::json!({"key": B64.encode(key)}))?;
        let value = match v.get("kvs").and_then(|k| k.as_array()).and_then(|k| k.first()) {
            None => None,
            Some(kv) => Some(decode(kv.get("value"))?),
        };
        Ok((value, revision(&v)))
    }

    /// Every key under `prefix` with its value (linearizable).
    pub fn range_prefix(&self, endpoint: &str, prefix: &str) -> Result<BTreeMap<String, String>> {
        let end = prefix_end(prefix);
        let v = self.call(
            endpoint,
            "/v3/kv/range",
            serde_json::json!({"key": B64.encode(prefix), "range_end": B64.encode(&end)}),
        )?;
        let mut out = BTreeMap::new();
        for kv in v.get("kvs").and_then(|k| k.as_array()).map(Vec::as_slice).unwrap_or_default() {
            out.insert(decode(kv.get("key"))?, decode(kv.get("value"))?);
        }
        Ok(out)
    }
}

/// `header.revision` of an answer (the gateway writes 64-bit numbers as strings).
fn revision(answer: &serde_json::Value) -> Option<i64> {
    int64(&answer["header"]["revision"])
}

/// The end of the key range of `prefix` (its last byte plus one), as etcd's range_end wants it.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A 64-bit number the gateway wrote as a string (or a number).
pub(crate) fn int64(v: &serde_json::Value) -> Option<i64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_i64())
}

/// A key or value the gateway sent as base64.
pub(crate) fn decode(v: Option<&serde_json::Value>) -> Result<String> {
    let s = v.and_then(|v| v.as_str()).unwrap_or_default();
    let bytes = B64.decode(s).with_context(|| format!("the gateway returned invalid base64 {s:?}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::cert::{issue_leaf, new_ca, LeafRequest, SigningCa};
    use crate::pki::profiles::Profiles;

    #[test]
    fn an_identity_needs_a_certificate_and_its_own_key() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Profiles::default();
        let issued = new_ca("test CA", &p.ca).unwrap();
        let ca = SigningCa::load(&issued.cert_pem, &issued.key_pem, "test").unwrap();
        let req = LeafRequest::new("client", Default::default(), &p.client);
        let (leaf, other) = (issue_leaf(&req, &ca.issuer).unwrap(), issue_leaf(&req, &ca.issuer).unwrap());
        std::fs::write(tmp.path().join("ca.crt"), &issued.cert_pem).unwrap();
        std::fs::write(tmp.path().join("client.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(tmp.path().join("client.key"), &leaf.key_pem).unwrap();
        let id = Identity::in_dir(tmp.path());
        id.tls_config().unwrap();

        std::fs::write(&id.key, &other.key_pem).unwrap();
        let err = format!("{:#}", id.tls_config().unwrap_err());
        assert!(err.contains("do not make a client identity") && err.contains("client.key"), "{err}");
        std::fs::write(&id.key, &leaf.cert_pem).unwrap();
        let err = format!("{:#}", id.tls_config().unwrap_err());
        assert!(err.contains("no PEM private key") && err.contains("client.key"), "{err}");
        std::fs::write(&id.ca, "").unwrap();
        let err = format!("{:#}", id.tls_config().unwrap_err());
        assert!(err.contains("no PEM certificate") && err.contains("ca.crt"), "{err}");
    }
}
