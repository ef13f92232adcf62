//! Certificate profiles: `pki/profiles.toml` in, checked [`Profiles`] out. The counterpart of
//! the tutorial's `ca-config.json`: per kind of certificate the key algorithm, the lifetime and
//! the extended key usages, plus whether peers get their own CA.
//!
//! The rules etcd imposes are enforced here, so a profile that would give a broken cluster is
//! an error naming the field: server and peer certificates need both `server-auth` and
//! `client-auth` (etcd 3.4's JSON gateway dials its own client port with the server certificate,
//! and peers dial each other with the peer certificate); client certificates need `client-auth`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// Key algorithm of a certificate kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096)
    }

    /// RSA modulus size, if RSA.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Usage {
    #[serde(rename = "server-auth")]
    ServerAuth,
    #[serde(rename = "client-auth")]
    ClientAuth,
}

/// A lifetime written as `"<N>h"` or `"<N>d"` (hours or days), e.g. `"8760h"`, `"365d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub hours: u64,
}

impl Lifetime {
    pub fn days(days: u64) -> Self {
        Lifetime { hours: days * 24 }
    }

    pub fn as_duration(self) -> time::Duration {
        time::Duration::hours(self.hours as i64)
    }

    fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let (num, mult) = if let Some(n) = s.strip_suffix('h') {
            (n, 1)
        } else if let Some(n) = s.strip_suffix('d') {
            (n, 24)
        } else {
            return Err(format!("{s:?} has no unit: write hours or days, e.g. \"8760h\" or \"365d\""));
        };
        let n: u64 =
            num.trim().parse().map_err(|_| format!("{s:?} is not a whole number of hours or days, e.g. \"365d\""))?;
        let hours = n.saturating_mul(mult);
        if hours == 0 || hours > 100 * 366 * 24 {
            return Err(format!("{s:?} must be between 1h and 100 years"));
        }
        Ok(Lifetime { hours })
    }
}

impl std::fmt::Display for Lifetime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.hours.is_multiple_of(24) {
            write!(f, "{}d", self.hours / 24)
        } else {
            write!(f, "{}h", self.hours)
        }
    }
}

/// Settings of the certificate authorities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaProfile {
    pub algorithm: KeyAlgorithm,
    pub lifetime: Lifetime,
    /// Peers are issued by their own CA (`peer-ca/`), so a client certificate is refused on the
    /// peer port.
    pub separate_peer_ca: bool,
    /// With one CA for everything, every peer certificate carries this CN and the nodes must run
    /// etcd with `--peer-cert-allowed-cn=<this>`.
    pub peer_common_name: String,
}

/// Settings of one kind of leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafProfile {
    pub algorithm: KeyAlgorithm,
    pub lifetime: Lifetime,
    pub usages: Vec<Usage>,
}

/// The checked profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profiles {
    pub ca: CaProfile,
    pub server: LeafProfile,
    pub peer: LeafProfile,
    pub client: LeafProfile,
}

impl Default for Profiles {
    /// The same values as the shipped `pki/profiles.toml`.
    fn default() -> Self {
        let both = vec![Usage::ServerAuth, Usage::ClientAuth];
        let leaf = |usages| LeafProfile { algorithm: KeyAlgorithm::EcdsaP256, lifetime: Lifetime::days(365), usages };
        Profiles {
            ca: CaProfile {
                algorithm: KeyAlgorithm::EcdsaP256,
                lifetime: Lifetime::days(3650),
                separate_peer_ca: true,
                peer_common_name: "etcd-peer".into(),
            },
            server: leaf(both.clone()),
            peer: leaf(both),
            client: leaf(vec![Usage::ClientAuth]),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfiles {
    ca: RawCa,
    server: RawLeaf,
    peer: RawLeaf,
    client: RawLeaf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    algorithm: KeyAlgorithm,
    lifetime: String,
    separate_peer_ca: bool,
    peer_common_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeaf {
    algorithm: KeyAlgorithm,
    lifetime: String,
    usages: Vec<Usage>,
}

impl Profiles {
    /// The CN of the peer certificate of the node `node`: its name when peers have a CA of
    /// their own, else the one CN every peer certificate carries (`ca.peer_common_name`).
    pub fn peer_common_name<'a>(&'a self, node: &'a str) -> &'a str {
        if self.ca.separate_peer_ca {
            node
        } else {
            &self.ca.peer_common_name
        }
    }

    /// `<project>/pki/profiles.toml`.
    pub fn default_path() -> PathBuf {
        crate::util::project_root().join("pki").join("profiles.toml")
    }

    pub fn load(path: &Path) -> Result<Profiles> {
        let text = fs::read_to_string(path).with_context(|| {
            format!("cannot read certificate profiles {}: pass an existing file to --profiles", path.display())
        })?;
        Profiles::from_toml(&text, &path.display().to_string())
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Profiles> {
        let raw: RawProfiles =
            toml::from_str(text).with_context(|| format!("{origin}: invalid certificate profiles"))?;
        let err = |field: &str, msg: String| anyhow!("{origin}: {field}: {msg}");
        let lifetime = |field: &str, s: &str| Lifetime::parse(s).map_err(|m| err(field, m));

        let ca = CaProfile {
            algorithm: raw.ca.algorithm,
            lifetime: lifetime("ca.lifetime", &raw.ca.lifetime)?,
            separate_peer_ca: raw.ca.separate_peer_ca,
            peer_common_name: raw.ca.peer_common_name,
        };
        if ca.peer_common_name.is_empty() || !ca.peer_common_name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(err(
                "ca.peer_common_name",
                "must be a non-empty name without spaces, e.g. \"etcd-peer\"".into(),
            ));
        }
        let leaf = |kind: &str, raw: RawLeaf| -> Result<LeafProfile> {
            let mut usages = raw.usages;
            usages.sort();
            usages.dedup();
            let has = |u| usages.contains(&u);
            let field = format!("{kind}.usages");
            match kind {
                "server" if !(has(Usage::ServerAuth) && has(Usage::ClientAuth)) => {
                    return Err(err(
                        &field,
                        "server certificates need [\"server-auth\", \"client-auth\"]: etcd 3.4's gateway dials its own client port \
                         with the server certificate, and every /v3 JSON call fails without client-auth"
                            .into(),
                    ))
                }
                "peer" if !(has(Usage::ServerAuth) && has(Usage::ClientAuth)) => {
                    return Err(err(
                        &field,
                        "peer certificates need [\"server-auth\", \"client-auth\"]: each member is server and client on the peer port".into(),
                    ))
                }
                "client" if !has(Usage::ClientAuth) => {
                    return Err(err(&field, "client certificates need [\"client-auth\"]".into()))
                }
                _ => {}
            }
            Ok(LeafProfile {
                algorithm: raw.algorithm,
                lifetime: lifetime(&format!("{kind}.lifetime"), &raw.lifetime)?,
                usages,
            })
        };
        Ok(Profiles {
            ca,
            server: leaf("server", raw.server)?,
            peer: leaf("peer", raw.peer)?,
            client: leaf("client", raw.client)?,
        })
    }

    /// Allowed but questionable settings, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, p) in [("server", &self.server), ("peer", &self.peer), ("client", &self.client)] {
            if p.lifetime.hours > self.ca.lifetime.hours {
                out.push(format!(
                    "{kind}.lifetime {} is longer than ca.lifetime {}: such certificates stop verifying when the CA expires",
                    p.lifetime, self.ca.lifetime
                ));
            }
        }
        if self.client.usages.contains(&Usage::ServerAuth) {
            out.push("client.usages includes server-auth: a client certificate could then act as a server".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_mean_what_the_project_promises() {
        let p = Profiles::load(&Profiles::default_path()).unwrap();
        // Peers have a CA of their own, so a client certificate is never accepted on the peer port.
        assert!(p.ca.separate_peer_ca);
        // Servers and peers are good for both ends of a connection (etcd's JSON gateway dials
        // itself with the server certificate); clients can never act as a server.
        for leaf in [&p.server, &p.peer] {
            assert!(leaf.usages.contains(&Usage::ServerAuth) && leaf.usages.contains(&Usage::ClientAuth));
        }
        assert_eq!(p.client.usages, [Usage::ClientAuth]);
        // Every key is P-256; leaves live a year, CAs ten, so a leaf never outlives its CA.
        for alg in [p.ca.algorithm, p.server.algorithm, p.peer.algorithm, p.client.algorithm] {
            assert_eq!(alg, KeyAlgorithm::EcdsaP256);
        }
        for leaf in [&p.server, &p.peer, &p.client] {
            assert_eq!(leaf.lifetime.hours, 365 * 24);
            assert!(leaf.lifetime.hours < p.ca.lifetime.hours);
        }
        assert_eq!(p.ca.lifetime.hours, 3650 * 24);
        assert!(p.warnings().is_empty());
        // The built-in fallback is the same policy.
        assert_eq!(p, Profiles::default());
    }

    #[test]
    fn lifetimes_parse() {
        assert_eq!(Lifetime::parse("43800h").unwrap().hours, 43800);
        assert_eq!(Lifetime::parse("365d").unwrap().hours, 365 * 24);
        assert!(Lifetime::parse("1y").is_err());
        assert!(Lifetime::parse("0d").is_err());
        assert!(Lifetime::parse("-5d").is_err());
    }

    #[test]
    fn a_server_profile_without_client_auth_is_refused() {
        let text = std::fs::read_to_string(Profiles::default_path()).unwrap();
        let bad = text.replacen("usages = [\"server-auth\", \"client-auth\"]", "usages = [\"server-auth\"]", 1);
        assert_ne!(bad, text);
        let msg = format!("{:#}", Profiles::from_toml(&bad, "p.toml").unwrap_err());
        assert!(msg.contains("server.usages"), "{msg}");
        let bad = text.replace("ecdsa-p256", "ed448");
        assert!(Profiles::from_toml(&bad, "p.toml").is_err());
        let bad = text.replace("[client]", "[client]\nextra = 1");
        assert!(format!("{:#}", Profiles::from_toml(&bad, "p.toml").unwrap_err()).contains("extra"));
    }
}
