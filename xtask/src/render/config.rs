//! The etcd configuration of one node, as `ETCD_*` environment variables: the single source of
//! every etcd flag this project runs with. Host bundles write it as an env file, the portable
//! service reads it through `EnvironmentFile=`, the smoke test passes it to `podman run --env`.
//! In: a cluster description, the facts of its PKI, where things live on the target.
//! Out: an ordered map `ETCD_NAME=... ETCD_CERT_FILE=...`.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::pki::cluster::{ClusterSpec, NodeSpec};
use crate::pki::compaction::Compaction;

/// The ports etcd listens on (its defaults; metrics on a port of its own, loopback only).
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub const METRICS_PORT: u16 = 2381;
/// Where a Kubernetes StatefulSet pod serves metrics over mutual TLS: its plain-http listener
/// already holds 2381 on the pod's address, for the kubelet's probes.
pub const METRICS_TLS_PORT_POD: u16 = 2382;

/// The TLS file variables and the file of the node's PKI directory each names (the
/// `nodes/<node>/` layout of `cargo xtask pki`). The portable service passes exactly these as
/// flags pointing into `${CREDENTIALS_DIRECTORY}` and loads each file as a credential of the
/// same name.
pub const TLS_FILES: [(&str, &str); 8] = [
    ("ETCD_TRUSTED_CA_FILE", "ca.crt"),
    ("ETCD_CERT_FILE", "server.crt"),
    ("ETCD_KEY_FILE", "server.key"),
    ("ETCD_PEER_TRUSTED_CA_FILE", "peer-ca.crt"),
    ("ETCD_PEER_CERT_FILE", "peer.crt"),
    ("ETCD_PEER_KEY_FILE", "peer.key"),
    // Re-read by etcd at every handshake (empty until `pki revoke`): see pki/issue/crl.rs.
    ("ETCD_CLIENT_CRL_FILE", "crl.pem"),
    ("ETCD_PEER_CRL_FILE", "peer-crl.pem"),
];

/// The command-line flag of an `ETCD_*` variable: `ETCD_PEER_CERT_FILE` -> `--peer-cert-file`.
pub fn flag_of(key: &str) -> Option<String> {
    let rest = key.strip_prefix("ETCD_")?;
    Some(format!("--{}", rest.to_ascii_lowercase().replace('_', "-")))
}

/// What the configuration needs from a PKI directory made by `cargo xtask pki`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFacts {
    pub token: String,
    /// Set when one CA issues peers and clients: peers are then restricted by CN.
    pub peer_cert_allowed_cn: Option<String>,
}

impl PkiFacts {
    /// Reads `token` and `manifest.json` of a PKI directory.
    pub fn read(pki_dir: &Path) -> Result<Self> {
        let token_path = pki_dir.join("token");
        let token = fs::read_to_string(&token_path)
            .with_context(|| {
                format!("cannot read {}: issue the PKI with `cargo xtask pki` first", token_path.display())
            })?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("{} is empty: run `cargo xtask pki` again to regenerate it", token_path.display());
        }
        let manifest_path = pki_dir.join("manifest.json");
        let text =
            fs::read_to_string(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
        let manifest: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("invalid JSON in {}", manifest_path.display()))?;
        let peer_cert_allowed_cn = manifest.get("peer_cert_allowed_cn").and_then(|v| v.as_str()).map(str::to_string);
        Ok(PkiFacts { token, peer_cert_allowed_cn })
    }
}

/// Where the node's files are on the machine (or in the container) that runs etcd.
#[derive(Debug, Clone)]
pub struct TargetPaths {
    /// The data directory (mode 0700, owned by the etcd user).
    pub data_dir: String,
    /// The directory holding the node's `server.crt`, `server.key`, `peer.crt`, `peer.key`,
    /// `ca.crt`, `peer-ca.crt` (a `nodes/<node>/` directory of the PKI).
    pub pki_dir: String,
}

impl TargetPaths {
    /// The layout of the OCI image and of host bundles.
    pub fn standard() -> Self {
        TargetPaths { data_dir: "/var/lib/etcd".to_string(), pki_dir: "/etc/etcd/pki".to_string() }
    }
}

/// `https://10.0.0.1:2379`, `https://[fd00::1]:2379`.
pub fn url(scheme: &str, ip: &IpAddr, port: u16) -> String {
    format!("{scheme}://{}:{port}", host_of(ip))
}

/// An address as the host part of a URL: `10.0.0.1`, `[fd00::1]`.
pub fn host_of(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// How a member is named and reached: by its node's address (hosts, static pods) or by the
/// names Kubernetes gives a StatefulSet's pods. Hosts are URL host parts (`10.0.0.1`,
/// `[fd00::1]`, a DNS name, or `$(POD_IP)` that Kubernetes expands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The member name (`--name`).
    pub name: String,
    /// Where it listens for clients and peers (an address: etcd binds no names).
    pub listen: String,
    /// What it advertises to clients and peers.
    pub advertise: String,
    /// Its loopback address, where it also listens for clients.
    pub loopback: String,
    /// Where the plain-http metrics and `/health` listener binds.
    pub metrics: String,
    /// Where (host, port) metrics are also served over mutual TLS for a Prometheus on another
    /// host (the description's `[monitoring]`).
    pub metrics_tls: Option<(String, u16)>,
    /// Every member of the initial cluster: its name and its advertised peer host.
    pub initial_cluster: Vec<(String, String)>,
}

impl Addressing {
    /// A node of the description, reached at its first IP; metrics on loopback, and on its first
    /// IP over mutual TLS when the description has `[monitoring]`.
    pub fn of_node(spec: &ClusterSpec, node: &NodeSpec) -> Result<Addressing> {
        let ip = primary_ip(node)?;
        let loopback = if ip.is_ipv6() { "[::1]" } else { "127.0.0.1" }.to_string();
        let initial_cluster = node_hosts(spec)?;
        Ok(Addressing {
            name: node.name.clone(),
            listen: host_of(&ip),
            advertise: host_of(&ip),
            metrics: loopback.clone(),
            metrics_tls: spec.monitoring.as_ref().map(|_| (host_of(&ip), METRICS_PORT)),
            loopback,
            initial_cluster,
        })
    }
}

/// Each node of the description by name, with the host it is reached at (its first IP): the
/// members of the initial cluster, and Prometheus's targets.
pub fn node_hosts(spec: &ClusterSpec) -> Result<Vec<(String, String)>> {
    spec.nodes.iter().map(|n| Ok((n.name.clone(), host_of(&primary_ip(n)?)))).collect()
}

/// The address a node is reached at: its first IP.
pub fn primary_ip(node: &NodeSpec) -> Result<IpAddr> {
    node.ips
        .first()
        .copied()
        .with_context(|| format!("node {}: field ips is empty; etcd needs an address to advertise", node.name))
}

/// The settings of one release line in `systemd/release-lines.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseLine {
    /// The `ETCD_*` variables the line adds.
    pub env: BTreeMap<String, String>,
    /// The paths Kubernetes probes on the metrics listener.
    pub health: HealthPaths,
    /// The TLS policy of the line's client and peer ports.
    pub tls: TlsPolicy,
}

/// Which TLS etcd accepts, from `tls` of `systemd/release-lines.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPolicy {
    /// `--cipher-suites`: TLS 1.2 suites, ECDHE with an AEAD cipher only.
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version`, for releases from `min_version_since` on.
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub min_version_since: Option<String>,
}

impl TlsPolicy {
    /// The `ETCD_*` variables of the policy for etcd `version`.
    pub fn env(&self, version: &str) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        env.insert("ETCD_CIPHER_SUITES".to_string(), self.cipher_suites.join(","));
        if let (Some(min), Some(since)) = (&self.min_version, &self.min_version_since) {
            let triple = |v: &str| {
                crate::definition::version_triple(v).with_context(|| format!("{v:?} is not MAJOR.MINOR.PATCH"))
            };
            if triple(version)? >= triple(since)? {
                env.insert("ETCD_TLS_MIN_VERSION".to_string(), min.clone());
            }
        }
        Ok(env)
    }

    /// Every suite forward-secret (ECDHE) and AEAD (GCM, ChaCha20-Poly1305); the reason otherwise.
    fn check(&self) -> std::result::Result<(), String> {
        if self.cipher_suites.is_empty() {
            return Err(
                "cipher_suites is empty: etcd would accept every suite Go offers, CBC and SHA-1 included".into()
            );
        }
        for s in &self.cipher_suites {
            let aead = s.contains("_GCM_") || s.contains("_CHACHA20_POLY1305");
            if !s.starts_with("TLS_ECDHE_") || !aead {
                return Err(format!(
                    "cipher_suites: {s} is not an ECDHE suite with AES-GCM or ChaCha20-Poly1305 (no forward secrecy or \
                     no AEAD)"
                ));
            }
        }
        match (&self.min_version, &self.min_version_since) {
            (Some(v), Some(_)) if v == "TLS1.2" || v == "TLS1.3" => Ok(()),
            (Some(v), Some(_)) => Err(format!("min_version: {v:?} is not TLS1.2 or TLS1.3")),
            (None, None) => Ok(()),
            _ => Err("min_version and min_version_since go together".into()),
        }
    }
}

/// Where Kubernetes probes a member's plain-http metrics listener (kubeadm's probes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthPaths {
    pub liveness: String,
    pub startup: String,
}

/// The settings of the release line of `version` (`systemd/release-lines.toml`).
pub fn release_line_settings(version: &str) -> Result<ReleaseLine> {
    let path = crate::util::project_root().join("systemd/release-lines.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let lines: BTreeMap<String, ReleaseLine> =
        toml::from_str(&text).with_context(|| format!("{}: not a valid release-line table", path.display()))?;
    crate::definition::check_version(version)?;
    let line = crate::definition::release_line(version);
    let Some(found) = lines.get(&line) else {
        bail!(
            "{}: no entry for etcd {line} (of {version}): add [\"{line}\"] with env = {{...}} (the variables that \
             release line needs, possibly none) and health = {{ liveness = ..., startup = ... }}",
            path.display()
        );
    };
    for key in found.env.keys() {
        if flag_of(key).is_none() {
            bail!("{}: [\"{line}\"] env: {key} is not an ETCD_* variable", path.display());
        }
    }
    found.tls.check().map_err(|e| anyhow::anyhow!("{}: [\"{line}\"] tls.{e}", path.display()))?;
    for (field, p) in [("liveness", &found.health.liveness), ("startup", &found.health.startup)] {
        if !p.starts_with("/health") {
            bail!("{}: [\"{line}\"] health.{field}: {p:?} must be a path of etcd's /health endpoint", path.display());
        }
    }
    Ok(found.clone())
}

/// The `ETCD_*` variables the release line of `version` adds (`systemd/release-lines.toml`).
pub fn release_line_env(version: &str) -> Result<BTreeMap<String, String>> {
    Ok(release_line_settings(version)?.env)
}

/// The `ETCD_*` variables of `node` running etcd `version`, sorted by name.
pub fn node_env(
    spec: &ClusterSpec,
    node: &NodeSpec,
    pki: &PkiFacts,
    paths: &TargetPaths,
    version: &str,
) -> Result<BTreeMap<String, String>> {
    member_env(&Addressing::of_node(spec, node)?, &spec.compaction, pki, paths, version)
}

/// The `ETCD_*` variables of a member addressed as `addr`, compacting its history as
/// `compaction` says (the description's `[compaction]`), running etcd `version`: every etcd
/// setting this project runs with is decided here.
pub fn member_env(
    addr: &Addressing,
    compaction: &Compaction,
    pki: &PkiFacts,
    paths: &TargetPaths,
    version: &str,
) -> Result<BTreeMap<String, String>> {
    let at = |scheme: &str, host: &str, port: u16| format!("{scheme}://{host}:{port}");
    let initial: Vec<String> =
        addr.initial_cluster.iter().map(|(name, host)| format!("{name}={}", at("https", host, PEER_PORT))).collect();
    let pki_file = |name: &str| format!("{}/{name}", paths.pki_dir.trim_end_matches('/'));
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("ETCD_NAME", addr.name.clone());
    set("ETCD_DATA_DIR", paths.data_dir.clone());
    // Clients: the member's address and loopback (etcdctl on the node, published ports).
    set(
        "ETCD_LISTEN_CLIENT_URLS",
        format!("{},{}", at("https", &addr.listen, CLIENT_PORT), at("https", &addr.loopback, CLIENT_PORT)),
    );
    set("ETCD_ADVERTISE_CLIENT_URLS", at("https", &addr.advertise, CLIENT_PORT));
    set("ETCD_LISTEN_PEER_URLS", at("https", &addr.listen, PEER_PORT));
    set("ETCD_INITIAL_ADVERTISE_PEER_URLS", at("https", &addr.advertise, PEER_PORT));
    set("ETCD_INITIAL_CLUSTER", initial.join(","));
    set("ETCD_INITIAL_CLUSTER_STATE", "new".to_string());
    set("ETCD_INITIAL_CLUSTER_TOKEN", pki.token.clone());
    // Metrics and health without TLS (on hosts: reachable from the node itself only).
    // With [monitoring] also on the node's address over mutual TLS: etcd serves https metrics
    // with the client port's TLS settings (the client CA, client-cert-auth).
    let mut metrics = at("http", &addr.metrics, METRICS_PORT);
    if let Some((host, port)) = &addr.metrics_tls {
        metrics = format!("{metrics},{}", at("https", host, *port));
    }
    set("ETCD_LISTEN_METRICS_URLS", metrics);
    set("ETCD_CLIENT_CERT_AUTH", "true".to_string());
    set("ETCD_PEER_CLIENT_CERT_AUTH", "true".to_string());
    for (key, file) in TLS_FILES {
        set(key, pki_file(file));
    }
    if let Some(cn) = &pki.peer_cert_allowed_cn {
        set("ETCD_PEER_CERT_ALLOWED_CN", cn.clone());
    }
    set("ETCD_LOGGER", "zap".to_string());
    set("ETCD_LOG_OUTPUTS", "stderr".to_string());
    // etcd 3.4 compacts nothing unless told to: the description's policy, or one hour kept.
    env.extend(compaction.env());
    let line = release_line_settings(version)?;
    env.extend(line.tls.env(version)?);
    env.extend(line.env);
    Ok(env)
}

/// Where a member stands in the switch of a running plain-http cluster to mutual TLS (see the
/// runbook in docs/day-2.md): each stage is the configuration of one step, derived from the final one
/// ([`node_env`]) so that it never drifts from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsStage {
    /// Plain http for clients and peers, no certificates: how the tutorial's first cluster runs.
    Plain,
    /// Clients on http and https on the same port (etcd tells them apart by the first byte),
    /// client certificates required on https; peers still on http, but with the peer
    /// certificates, so that the member can already dial peers that moved to https.
    Clients,
    /// As `Clients`, with this member's peer listener on https (after `member update`).
    Peers,
    /// Mutual TLS only: the final configuration as it is.
    Tls,
}

impl TlsStage {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsStage::Plain => "plain",
            TlsStage::Clients => "clients",
            TlsStage::Peers => "peers",
            TlsStage::Tls => "tls",
        }
    }
}

/// The configuration of a member at `stage`, from its final mutual-TLS configuration `tls`.
pub fn staged_env(tls: &BTreeMap<String, String>, stage: TlsStage) -> BTreeMap<String, String> {
    let mut env = tls.clone();
    let plain = |v: &str| v.replace("https://", "http://");
    let both = |v: &str| {
        v.split(',').flat_map(|u| [u.replace("https://", "http://"), u.to_string()]).collect::<Vec<_>>().join(",")
    };
    let set = |env: &mut BTreeMap<String, String>, key: &str, f: &dyn Fn(&str) -> String| {
        if let Some(v) = env.get(key).cloned() {
            env.insert(key.to_string(), f(&v));
        }
    };
    match stage {
        TlsStage::Tls => {}
        TlsStage::Plain => {
            for key in [
                "ETCD_LISTEN_CLIENT_URLS",
                "ETCD_ADVERTISE_CLIENT_URLS",
                "ETCD_LISTEN_PEER_URLS",
                "ETCD_INITIAL_ADVERTISE_PEER_URLS",
                "ETCD_INITIAL_CLUSTER",
            ] {
                set(&mut env, key, &plain);
            }
            // No client TLS yet: metrics on loopback only, until the clients stage.
            let http_only = |v: &str| v.split(',').filter(|u| !u.starts_with("https://")).collect::<Vec<_>>().join(",");
            set(&mut env, "ETCD_LISTEN_METRICS_URLS", &http_only);
            for (key, _) in TLS_FILES {
                env.remove(key);
            }
            for key in [
                "ETCD_CLIENT_CERT_AUTH",
                "ETCD_PEER_CLIENT_CERT_AUTH",
                "ETCD_PEER_CERT_ALLOWED_CN",
                "ETCD_CIPHER_SUITES",
                "ETCD_TLS_MIN_VERSION",
            ] {
                env.remove(key);
            }
        }
        TlsStage::Clients | TlsStage::Peers => {
            set(&mut env, "ETCD_LISTEN_CLIENT_URLS", &both);
            set(&mut env, "ETCD_ADVERTISE_CLIENT_URLS", &both);
            if stage == TlsStage::Clients {
                for key in ["ETCD_LISTEN_PEER_URLS", "ETCD_INITIAL_ADVERTISE_PEER_URLS"] {
                    set(&mut env, key, &plain);
                }
            }
            // Read only when a member is created: kept as the cluster was born.
            set(&mut env, "ETCD_INITIAL_CLUSTER", &plain);
        }
    }
    env
}

/// The variables as an environment file (`KEY=value` lines, sorted), with a header.
pub fn env_file(header: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    for (k, v) in env {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ClusterSpec {
        ClusterSpec::from_toml(
            "name='t'\nclients=['etcdctl']\n[[nodes]]\nname='a'\nips=['10.0.0.1']\n[[nodes]]\nname='b'\nips=['10.0.0.2']\n[[nodes]]\nname='c'\nips=['fd00::3']\n",
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn every_node_gets_tls_everywhere_and_the_whole_cluster() {
        let spec = spec();
        let facts = PkiFacts { token: "tok".into(), peer_cert_allowed_cn: None };
        let env = node_env(&spec, &spec.nodes[0], &facts, &TargetPaths::standard(), "3.4.9").unwrap();
        assert_eq!(
            env["ETCD_INITIAL_CLUSTER"],
            "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380,c=https://[fd00::3]:2380"
        );
        assert_eq!(env["ETCD_LISTEN_CLIENT_URLS"], "https://10.0.0.1:2379,https://127.0.0.1:2379");
        assert_eq!(env["ETCD_LISTEN_METRICS_URLS"], "http://127.0.0.1:2381");
        assert_eq!(env["ETCD_PEER_TRUSTED_CA_FILE"], "/etc/etcd/pki/peer-ca.crt");
        assert_eq!(env["ETCD_CLIENT_CERT_AUTH"], "true");
        assert_eq!(env["ETCD_PEER_CLIENT_CERT_AUTH"], "true");
        assert!(!env.contains_key("ETCD_PEER_CERT_ALLOWED_CN"));
        for (k, v) in &env {
            if k.ends_with("_URLS") && k != "ETCD_LISTEN_METRICS_URLS" {
                assert!(v.split(',').all(|u| u.starts_with("https://")), "{k}={v}");
            }
        }
        let env = node_env(&spec, &spec.nodes[2], &facts, &TargetPaths::standard(), "3.4.9").unwrap();
        assert_eq!(env["ETCD_LISTEN_CLIENT_URLS"], "https://[fd00::3]:2379,https://[::1]:2379");
    }

    #[test]
    fn every_member_compacts_as_the_description_says() {
        let facts = PkiFacts { token: "tok".into(), peer_cert_allowed_cn: None };
        let mut spec = spec();
        let env =
            |spec: &ClusterSpec| node_env(spec, &spec.nodes[1], &facts, &TargetPaths::standard(), "3.4.9").unwrap();
        let default = env(&spec);
        assert_eq!(default["ETCD_AUTO_COMPACTION_MODE"], "periodic");
        assert_eq!(default["ETCD_AUTO_COMPACTION_RETENTION"], "1h");
        spec.compaction = Compaction::Revision { retention: 10000 };
        assert_eq!(env(&spec)["ETCD_AUTO_COMPACTION_RETENTION"], "10000");
        spec.compaction = Compaction::Off;
        assert!(env(&spec).keys().all(|k| !k.starts_with("ETCD_AUTO_COMPACTION")), "off is etcd's default");
        // Every step of the switch to TLS keeps it.
        assert_eq!(staged_env(&default, TlsStage::Plain)["ETCD_AUTO_COMPACTION_RETENTION"], "1h");
    }

    #[test]
    fn a_shared_ca_restricts_peers_by_cn() {
        let spec = spec();
        let facts = PkiFacts { token: "tok".into(), peer_cert_allowed_cn: Some("etcd-peer".into()) };
        let env = node_env(&spec, &spec.nodes[1], &facts, &TargetPaths::standard(), "3.4.9").unwrap();
        assert_eq!(env["ETCD_PEER_CERT_ALLOWED_CN"], "etcd-peer");
    }

    #[test]
    fn each_node_is_rendered_for_the_release_line_it_runs() {
        let spec = spec();
        let facts = PkiFacts { token: "tok".into(), peer_cert_allowed_cn: None };
        let key = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED";
        let v34 = node_env(&spec, &spec.nodes[0], &facts, &TargetPaths::standard(), "3.4.9").unwrap();
        let v35 = node_env(&spec, &spec.nodes[0], &facts, &TargetPaths::standard(), "3.5.16").unwrap();
        assert!(!v34.contains_key(key), "3.4 has no such flag");
        assert_eq!(v35[key], "true");
        // The TLS policy: the same suites on both lines (peers talk across an upgrade), AEAD with
        // ECDHE only; --tls-min-version only where the line has the flag.
        assert_eq!(v34["ETCD_CIPHER_SUITES"], v35["ETCD_CIPHER_SUITES"]);
        for suite in v34["ETCD_CIPHER_SUITES"].split(',') {
            assert!(suite.starts_with("TLS_ECDHE_") && !suite.contains("CBC"), "{suite}");
        }
        assert!(!v34.contains_key("ETCD_TLS_MIN_VERSION"));
        assert_eq!(v35["ETCD_TLS_MIN_VERSION"], "TLS1.2");
        // Pre-vote: set on 3.4, where it is off by default; 3.5 has it on by default.
        assert_eq!(v34["ETCD_PRE_VOTE"], "true");
        assert!(!v35.contains_key("ETCD_PRE_VOTE"));
        // Everything else is the same flag set in both lines.
        let mut rest = v35.clone();
        rest.remove(key);
        rest.remove("ETCD_TLS_MIN_VERSION");
        let mut v34 = v34.clone();
        v34.remove("ETCD_PRE_VOTE");
        assert_eq!(rest, v34);
        let err = node_env(&spec, &spec.nodes[0], &facts, &TargetPaths::standard(), "3.7.0").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("release-lines.toml") && text.contains("3.7"), "{text}");
    }

    #[test]
    fn a_tls_policy_without_forward_secrecy_or_aead_is_refused() {
        let policy = |suites: &[&str], min: Option<&str>, since: Option<&str>| TlsPolicy {
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            min_version: min.map(String::from),
            min_version_since: since.map(String::from),
        };
        let ok = policy(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], Some("TLS1.2"), Some("3.5.16"));
        ok.check().unwrap();
        assert!(!ok.env("3.5.15").unwrap().contains_key("ETCD_TLS_MIN_VERSION"));
        assert_eq!(ok.env("3.5.16").unwrap()["ETCD_TLS_MIN_VERSION"], "TLS1.2");
        for (bad, why) in [
            (policy(&["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"], None, None), "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
            (policy(&["TLS_RSA_WITH_AES_128_GCM_SHA256"], None, None), "forward secrecy"),
            (policy(&[], None, None), "empty"),
            (policy(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], Some("TLS1.1"), Some("3.5.16")), "TLS1.1"),
            (policy(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], Some("TLS1.2"), None), "go together"),
        ] {
            let err = bad.check().unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn each_step_of_the_switch_to_tls_is_derived_from_the_final_configuration() {
        let spec = spec();
        let facts = PkiFacts { token: "tok".into(), peer_cert_allowed_cn: None };
        let tls = node_env(&spec, &spec.nodes[0], &facts, &TargetPaths::standard(), "3.4.9").unwrap();
        assert_eq!(staged_env(&tls, TlsStage::Tls), tls);
        let plain = staged_env(&tls, TlsStage::Plain);
        assert_eq!(plain["ETCD_LISTEN_CLIENT_URLS"], "http://10.0.0.1:2379,http://127.0.0.1:2379");
        assert_eq!(plain["ETCD_LISTEN_PEER_URLS"], "http://10.0.0.1:2380");
        assert!(plain["ETCD_INITIAL_CLUSTER"].starts_with("a=http://10.0.0.1:2380,"));
        assert!(plain.keys().all(|k| !k.ends_with("_FILE") && !k.ends_with("CERT_AUTH")), "{plain:?}");
        let clients = staged_env(&tls, TlsStage::Clients);
        assert_eq!(
            clients["ETCD_LISTEN_CLIENT_URLS"],
            "http://10.0.0.1:2379,https://10.0.0.1:2379,http://127.0.0.1:2379,https://127.0.0.1:2379"
        );
        assert_eq!(clients["ETCD_LISTEN_PEER_URLS"], "http://10.0.0.1:2380");
        assert_eq!(clients["ETCD_PEER_CERT_FILE"], tls["ETCD_PEER_CERT_FILE"]);
        assert_eq!(clients["ETCD_CLIENT_CERT_AUTH"], "true");
        let peers = staged_env(&tls, TlsStage::Peers);
        assert_eq!(peers["ETCD_LISTEN_PEER_URLS"], "https://10.0.0.1:2380");
        assert_eq!(peers["ETCD_INITIAL_ADVERTISE_PEER_URLS"], "https://10.0.0.1:2380");
        assert_eq!(peers["ETCD_LISTEN_CLIENT_URLS"], clients["ETCD_LISTEN_CLIENT_URLS"]);
    }
}
