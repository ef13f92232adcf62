//! The cluster description: a TOML file (e.g. `clusters/tutorial.toml`) in, a checked
//! [`ClusterSpec`] out. Later stages (host bundles, smoke test) reuse this type to render
//! the etcd flags of every node.
//!
//! ```toml
//! name = "tutorial"                 # DNS label; names the output directory
//! # token = "..."                   # optional initial-cluster token; generated when absent
//! clients = ["etcdctl", "healthcheck"]
//! # tuning = "medium"              # optional preset of systemd/tuning.toml (small, medium,
//!                                   # large, xlarge); etcd's own defaults when absent
//!
//! [[nodes]]
//! name = "master1"                  # DNS label, also the certificate CN and a SAN
//! ips = ["10.0.1.204"]              # IP SANs; peers are checked against their source IP
//! dns = ["master1.example.org"]     # optional extra DNS SANs
//!
//! [kubernetes]                      # optional: the names of the cluster run as a StatefulSet
//! namespace = "etcd"                # (`cargo xtask k8s`); node i's certificates then also
//! # name = "tutorial"               # carry its pod's DNS names and the client Service's
//! # cluster_domain = "cluster.local"
//!
//! [monitoring]                      # optional: metrics also on each node's first IP over
//! scrape_client = "prometheus"      # mutual TLS, scraped with this client's certificate
//! # config_dir = "/etc/prometheus"  # where the Prometheus host keeps the rendered files
//!
//! [compaction]                      # optional: how etcd compacts its history by itself
//! mode = "periodic"                 # (`compaction.rs`); periodic, keeping 1h, when absent
//! retention = "1h"
//!
//! [backup]                          # optional: snapshots every interval, shipped off the
//! interval = "1h"                   # host with rsync over ssh (`backup.rs`); hourly, 24
//! keep = 24                         # kept, on the host only, when absent
//! target = "etcd-backup@10.0.1.10:/srv/etcd-backups"
//! host_key = "ssh-ed25519 AAAA..."
//! ```
//!
//! Every rule below is an error naming the field: unknown fields, no nodes, duplicate node
//! names, IPs, DNS names or client names, invalid IPs, names that are not DNS labels, a
//! compaction policy etcd would refuse or misread. An even number of nodes is only a warning
//! ([`ClusterSpec::warnings`]).
//!
//! Longer than 600 lines: one rule per field of one file format, and a test per rule (the
//! tests are half of it); split, the checks would lose the single place that reads the file.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::backup::{Backup, RawBackup};
use super::compaction::{Compaction, RawCompaction};
use crate::auth::roles::Access;

/// A checked cluster description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSpec {
    /// The cluster name: a DNS label, used for the output directory and the CA subjects.
    pub name: String,
    /// The initial-cluster token, when the description fixes one. When `None` the PKI stage
    /// generates a random one and stores it beside the certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Client identities to issue certificates for; each is the certificate CN (the etcd user).
    pub clients: Vec<String>,
    /// The members, in the order of the description.
    pub nodes: Vec<NodeSpec>,
    /// The names of the cluster run as a Kubernetes StatefulSet, when the description has a
    /// `[kubernetes]` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeNames>,
    /// How Prometheus reaches the members, when the description has a `[monitoring]` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
    /// How etcd compacts its history (the description's `[compaction]`, or its default).
    pub compaction: Compaction,
    /// How often the members snapshot themselves and where the snapshots go (`[backup]`).
    pub backup: Backup,
    /// What each client may do with etcd's auth on (`[access]`); `None`: every client is root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// The description's `[monitoring]` section: each member also serves `/metrics` on its first IP
/// over mutual TLS (port 2381), and Prometheus scrapes it with the certificate of
/// `scrape_client`, one of `clients`. `config_dir` is where the Prometheus host keeps the files
/// `render` writes for it (default [`MonitoringSpec::DEFAULT_CONFIG_DIR`]): every file they name
/// is named by its absolute path there, since Prometheus resolves a relative name against its
/// configuration's directory but the blackbox exporter against its working directory (`/` under
/// Debian's unit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSpec {
    pub scrape_client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_dir: Option<String>,
}

impl MonitoringSpec {
    /// Where Debian's `prometheus` and `prometheus-blackbox-exporter` read their configuration.
    pub const DEFAULT_CONFIG_DIR: &'static str = "/etc/prometheus";

    /// The Prometheus host's configuration directory, without a trailing `/`.
    pub fn config_dir(&self) -> &str {
        self.config_dir.as_deref().map(|d| d.trim_end_matches('/')).unwrap_or(Self::DEFAULT_CONFIG_DIR)
    }
}

/// Why `dir` cannot be the Prometheus host's configuration directory, if it cannot.
pub fn config_dir_problem(dir: &str) -> Option<&'static str> {
    if !dir.starts_with('/') {
        Some("is not an absolute path: the blackbox exporter would resolve it against its working directory")
    } else if dir.split('/').any(|c| c == "..") {
        Some("has a `..` component")
    } else if dir.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\') {
        Some("has white space, a quote, a backslash or a control character")
    } else if dir.trim_end_matches('/').is_empty() {
        Some("is the root directory")
    } else {
        None
    }
}

/// How a StatefulSet of the cluster is named in Kubernetes: member `i` of the description is
/// pod `<name>-<i>`, reached at `<name>-<i>.<name>-peer.<namespace>.svc.<cluster_domain>`
/// (the headless Service), clients use the Service `<name>.<namespace>.svc.<cluster_domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeNames {
    pub namespace: String,
    /// The StatefulSet, its Services, Secret and PodDisruptionBudget are named after it.
    pub name: String,
    pub cluster_domain: String,
}

impl KubeNames {
    /// The headless Service that gives each pod its DNS name.
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.name)
    }

    /// The name of member `i`'s pod.
    pub fn pod(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    /// The fully qualified DNS name of member `i`'s pod.
    pub fn pod_fqdn(&self, i: usize) -> String {
        format!("{}.{}.{}.svc.{}", self.pod(i), self.peer_service(), self.namespace, self.cluster_domain)
    }

    /// The DNS names of member `i`'s certificates: its pod, and the client Service, each fully
    /// qualified and as `*.svc` (what pods of the cluster resolve through their search path).
    pub fn member_dns(&self, i: usize) -> Vec<String> {
        let svc = format!("{}.{}.svc", self.name, self.namespace);
        let pod = format!("{}.{}.{}.svc", self.pod(i), self.peer_service(), self.namespace);
        vec![format!("{pod}.{}", self.cluster_domain), pod, format!("{svc}.{}", self.cluster_domain), svc]
    }
}

/// A description with the choices only host bundles use: [`ClusterSpec::load_described`].
/// (Kept beside [`ClusterSpec`] rather than in it, so that code building a `ClusterSpec` by hand
/// is unaffected.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedCluster {
    pub spec: ClusterSpec,
    /// The tuning preset (a name defined in `systemd/tuning.toml`, checked when rendering);
    /// `None` runs etcd with its own defaults.
    pub tuning: Option<String>,
}

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    /// A DNS label: the member name, the server certificate CN and a DNS SAN.
    pub name: String,
    /// Addresses the node is reached at (IP SANs of its server and peer certificates).
    pub ips: Vec<IpAddr>,
    /// Extra DNS names of the node (DNS SANs).
    pub dns: Vec<String>,
    /// The in-cluster DNS names of its StatefulSet pod ([`KubeNames::member_dns`]): SANs too,
    /// derived from the description's `[kubernetes]` section, never written there.
    #[serde(skip)]
    pub kube_dns: Vec<String>,
}

/// The file as written; checked into a [`ClusterSpec`] by [`ClusterSpec::from_toml`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    token: Option<String>,
    #[serde(default)]
    clients: Vec<String>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    tuning: Option<String>,
    kubernetes: Option<RawKube>,
    monitoring: Option<MonitoringSpec>,
    compaction: Option<RawCompaction>,
    backup: Option<RawBackup>,
    access: Option<toml::Table>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawKube {
    namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
}

impl ClusterSpec {
    /// Reads and checks a cluster description file.
    pub fn load(path: &Path) -> Result<ClusterSpec> {
        let text = fs::read_to_string(path).with_context(|| {
            format!("cannot read cluster description {}: pass an existing file to --cluster", path.display())
        })?;
        ClusterSpec::from_toml(&text, &path.display().to_string())
    }

    /// Reads and checks a cluster description file, with its tuning choice.
    pub fn load_described(path: &Path) -> Result<DescribedCluster> {
        let text = fs::read_to_string(path).with_context(|| {
            format!("cannot read cluster description {}: pass an existing file to --cluster", path.display())
        })?;
        ClusterSpec::from_toml_described(&text, &path.display().to_string())
    }

    /// Parses and checks a description; `origin` names the file in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<ClusterSpec> {
        Ok(ClusterSpec::from_toml_described(text, origin)?.spec)
    }

    /// Parses and checks a description, with its tuning choice.
    pub fn from_toml_described(text: &str, origin: &str) -> Result<DescribedCluster> {
        let raw: RawCluster = toml::from_str(text).with_context(|| format!("{origin}: invalid cluster description"))?;
        let err = |field: &str, msg: String| anyhow::anyhow!("{origin}: {field}: {msg}");

        check_dns_label(&raw.name).map_err(|m| err("name", m))?;

        if let Some(token) = &raw.token {
            if token.is_empty() || token.len() > 256 || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(err(
                    "token",
                    "must be 1 to 256 printable ASCII characters without spaces; or remove it to get a random token"
                        .into(),
                ));
            }
        }

        if let Some(tuning) = &raw.tuning {
            check_dns_label(tuning).map_err(|m| {
                err(
                    "tuning",
                    format!(
                        "{m}; name a preset of systemd/tuning.toml (small, medium, large, xlarge) or remove the field"
                    ),
                )
            })?;
        }

        if raw.nodes.is_empty() {
            return Err(err("nodes", "no nodes: add at least one [[nodes]] table with a name and ips".into()));
        }

        let mut names = BTreeSet::new();
        let mut ips_seen = BTreeSet::new();
        let mut dns_seen = BTreeSet::new();
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (i, node) in raw.nodes.iter().enumerate() {
            let at = |f: &str| format!("nodes[{i}].{f}");
            check_dns_label(&node.name).map_err(|m| err(&at("name"), m))?;
            if !names.insert(node.name.clone()) {
                return Err(err(
                    &at("name"),
                    format!("{:?} is used by two nodes; node names must be unique", node.name),
                ));
            }
            let mut ips = Vec::new();
            for (j, ip) in node.ips.iter().enumerate() {
                let parsed: IpAddr = ip.trim().parse().map_err(|_| {
                    err(
                        &at(&format!("ips[{j}]")),
                        format!("{ip:?} is not an IP address; write e.g. \"10.0.1.204\" or \"fd00::1\""),
                    )
                })?;
                if parsed.is_unspecified() || is_loopback_default(parsed) {
                    return Err(err(
                        &at(&format!("ips[{j}]")),
                        format!("{ip} is not a node address (loopback and 0.0.0.0 are added to every certificate anyway); remove it"),
                    ));
                }
                if !ips_seen.insert(parsed) {
                    return Err(err(
                        &at(&format!("ips[{j}]")),
                        format!("{parsed} is listed twice; every address belongs to one node"),
                    ));
                }
                ips.push(parsed);
            }
            let mut dns = Vec::new();
            for (j, name) in node.dns.iter().enumerate() {
                check_dns_name(name).map_err(|m| err(&at(&format!("dns[{j}]")), m))?;
                if *name == node.name || !dns_seen.insert(name.clone()) {
                    return Err(err(
                        &at(&format!("dns[{j}]")),
                        format!("{name:?} is listed twice; every DNS name belongs to one node"),
                    ));
                }
                dns.push(name.clone());
            }
            if ips.is_empty() && dns.is_empty() {
                return Err(err(
                    &at("ips"),
                    format!(
                        "node {:?} has no address: peers are checked against their source IP, so list its IPs",
                        node.name
                    ),
                ));
            }
            nodes.push(NodeSpec { name: node.name.clone(), ips, dns, kube_dns: Vec::new() });
        }
        // A node name must not be another node's DNS name either.
        for node in &nodes {
            if dns_seen.contains(&node.name) {
                return Err(err(
                    "nodes",
                    format!("{:?} is both a node name and another node's DNS name; rename one", node.name),
                ));
            }
        }

        let mut clients_seen = BTreeSet::new();
        for (i, client) in raw.clients.iter().enumerate() {
            check_identity(client).map_err(|m| err(&format!("clients[{i}]"), m))?;
            if !clients_seen.insert(client.clone()) {
                return Err(err(&format!("clients[{i}]"), format!("{client:?} is listed twice")));
            }
        }

        let kubernetes = match &raw.kubernetes {
            Some(k) => {
                let names = KubeNames {
                    namespace: k.namespace.clone(),
                    name: k.name.clone().unwrap_or_else(|| raw.name.clone()),
                    cluster_domain: k.cluster_domain.clone().unwrap_or_else(|| "cluster.local".to_string()),
                };
                check_dns_label(&names.namespace).map_err(|m| err("kubernetes.namespace", m))?;
                check_dns_label(&names.peer_service()).map_err(|m| {
                    err("kubernetes.name", format!("{m} (with -peer appended: the headless Service); shorten it"))
                })?;
                check_dns_name(&names.cluster_domain).map_err(|m| err("kubernetes.cluster_domain", m))?;
                for (i, node) in nodes.iter_mut().enumerate() {
                    node.kube_dns = names.member_dns(i);
                    for name in &node.kube_dns {
                        check_dns_name(name)
                            .map_err(|m| err("kubernetes", format!("member {i} would be named {name}: {m}")))?;
                        if dns_seen.contains(name) {
                            return Err(err(
                                "kubernetes",
                                format!("{name} is also a node's DNS name; remove it from dns (it is derived)"),
                            ));
                        }
                    }
                }
                Some(names)
            }
            None => None,
        };
        if let Some(m) = &raw.monitoring {
            if !raw.clients.contains(&m.scrape_client) {
                return Err(err(
                    "monitoring.scrape_client",
                    format!(
                        "{:?} is not among clients {:?}: add it to clients (its certificate is issued then) or name one \
                         of them",
                        m.scrape_client, raw.clients
                    ),
                ));
            }
            if let Some(problem) = m.config_dir.as_deref().and_then(config_dir_problem) {
                return Err(err(
                    "monitoring.config_dir",
                    format!(
                        "{:?} {problem}; name the Prometheus host's configuration directory by its absolute path, \
                         such as {:?} (the default)",
                        m.config_dir.as_deref().unwrap_or_default(),
                        MonitoringSpec::DEFAULT_CONFIG_DIR
                    ),
                ));
            }
            if let Some(node) = nodes.iter().find(|n| n.ips.is_empty()) {
                return Err(err(
                    "monitoring",
                    format!(
                        "node {:?} has no IP to serve metrics on (they listen on a node's first IP); add its ips or \
                         remove [monitoring]",
                        node.name
                    ),
                ));
            }
        }
        let compaction = Compaction::check(raw.compaction.as_ref()).map_err(|(field, m)| err(field, m))?;
        let backup = Backup::check(raw.backup.as_ref()).map_err(|(field, m)| err(field, m))?;
        let access = Access::check(raw.access.as_ref(), &raw.clients).map_err(|(field, m)| err(&field, m))?;
        let spec = ClusterSpec {
            name: raw.name,
            token: raw.token,
            clients: raw.clients,
            nodes,
            kubernetes,
            monitoring: raw.monitoring,
            compaction,
            backup,
            access,
        };
        Ok(DescribedCluster { spec, tuning: raw.tuning })
    }

    /// Things that are allowed but probably wrong, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.nodes.len().is_multiple_of(2) {
            out.push(format!(
                "cluster {:?} has {} nodes: an even count tolerates no more failures than one node fewer; use an odd number",
                self.name,
                self.nodes.len()
            ));
        }
        for node in &self.nodes {
            if node.ips.is_empty() {
                out.push(format!(
                    "node {:?} has no IPs: peer connections then pass only if its DNS names resolve to its source address",
                    node.name
                ));
            }
        }
        if self.clients.is_empty() {
            out.push(format!(
                "cluster {:?} lists no clients: nobody will be able to talk to it; add e.g. clients = [\"etcdctl\"]",
                self.name
            ));
        }
        out.extend(self.compaction.warning());
        out.extend(self.backup.warning());
        out
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The description in its file format (without the token, which is stored on its own).
    pub fn to_toml(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Out<'a> {
            name: &'a str,
            clients: &'a [String],
            nodes: Vec<OutNode<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            kubernetes: Option<RawKube>,
            #[serde(skip_serializing_if = "Option::is_none")]
            monitoring: Option<&'a MonitoringSpec>,
            compaction: RawCompaction,
            backup: RawBackup,
        }
        #[derive(Serialize)]
        struct OutNode<'a> {
            name: &'a str,
            ips: Vec<String>,
            dns: &'a [String],
        }
        let out = Out {
            name: &self.name,
            clients: &self.clients,
            nodes: self
                .nodes
                .iter()
                .map(|n| OutNode { name: &n.name, ips: n.ips.iter().map(|ip| ip.to_string()).collect(), dns: &n.dns })
                .collect(),
            kubernetes: self.kubernetes.as_ref().map(|k| RawKube {
                namespace: k.namespace.clone(),
                name: Some(k.name.clone()),
                cluster_domain: Some(k.cluster_domain.clone()),
            }),
            monitoring: self.monitoring.as_ref(),
            compaction: self.compaction.raw(),
            backup: self.backup.raw(),
        };
        toml::to_string(&out).context("cannot serialize the cluster description")
    }
}

/// A Subject Alternative Name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

impl NodeSpec {
    /// The SANs of this node's server and peer certificates: its name, its DNS names, its IPs,
    /// `localhost`, `127.0.0.1` and `::1` (etcdctl inside the node and published ports use
    /// loopback). Sorted and without duplicates.
    pub fn sans(&self) -> BTreeSet<San> {
        let mut out = BTreeSet::new();
        out.insert(San::Dns(self.name.clone()));
        out.extend(self.dns.iter().cloned().map(San::Dns));
        out.extend(self.kube_dns.iter().cloned().map(San::Dns));
        out.extend(self.ips.iter().copied().map(San::Ip));
        out.insert(San::Dns("localhost".into()));
        out.insert(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        out.insert(San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        out
    }
}

fn is_loopback_default(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

/// An RFC 1123 label in lower case: 1-63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn check_dns_label(s: &str) -> std::result::Result<(), String> {
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if s.is_empty() || s.len() > 63 || !ok_chars || s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "{s:?} is not a DNS label: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'"
        ));
    }
    Ok(())
}

/// A DNS name: dot-separated labels, at most 253 characters, no wildcard.
pub fn check_dns_name(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} is not a DNS name: it must have 1 to 253 characters"));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err(format!("{s:?} is an IP address: list it under ips"));
    }
    for label in s.split('.') {
        check_dns_label(label).map_err(|_| {
            format!(
                "{s:?} is not a DNS name: each dot-separated part must be 1 to 63 lowercase letters, digits and '-'"
            )
        })?;
    }
    Ok(())
}

/// A client identity: the certificate CN and a directory name.
fn check_identity(s: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(format!(
            "{s:?} is not a client identity: use 1 to 64 letters, digits, '-', '_' and '.', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

/// Fails when an identity would collide with a reserved certificate name.
pub fn check_client_not_reserved(spec: &ClusterSpec, reserved_cn: &str) -> Result<()> {
    if let Some(i) = spec.clients.iter().position(|c| c == reserved_cn) {
        bail!(
            "clients[{i}]: {reserved_cn:?} is the common name every peer certificate carries (profiles: ca.peer_common_name); \
             a client with that name would be accepted on the peer port: rename the client"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"
clients = ["etcdctl"]
[[nodes]]
name = "a"
ips = ["10.0.0.1"]
[[nodes]]
name = "b"
ips = ["10.0.0.2", "fd00::2"]
dns = ["b.example.org"]
[[nodes]]
name = "c"
ips = ["10.0.0.3"]
"#;

    fn parse(text: &str) -> Result<ClusterSpec> {
        ClusterSpec::from_toml(text, "test.toml")
    }

    fn err_of(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn good_description_parses_with_sans() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.nodes.len(), 3);
        // Only that its snapshots stay on each host (no [backup] target).
        assert_eq!(spec.warnings(), [spec.backup.warning().unwrap()]);
        let sans: Vec<String> = spec.node("b").unwrap().sans().iter().map(|s| s.to_string()).collect();
        for want in
            ["DNS:b", "DNS:b.example.org", "DNS:localhost", "IP:10.0.0.2", "IP:fd00::2", "IP:127.0.0.1", "IP:::1"]
        {
            assert!(sans.contains(&want.to_string()), "{want} missing from {sans:?}");
        }
        let round = parse(&spec.to_toml().unwrap()).unwrap();
        assert_eq!(round, spec);
    }

    #[test]
    fn a_kubernetes_section_adds_each_pods_names_to_its_node() {
        let text = format!("{GOOD}\n[kubernetes]\nnamespace = \"etcd\"\n");
        let spec = parse(&text).unwrap();
        let k = spec.kubernetes.clone().unwrap();
        assert_eq!((k.name.as_str(), k.cluster_domain.as_str()), ("demo", "cluster.local"));
        let sans: Vec<String> = spec.nodes[1].sans().iter().map(|s| s.to_string()).collect();
        for want in [
            "DNS:demo-1.demo-peer.etcd.svc.cluster.local",
            "DNS:demo-1.demo-peer.etcd.svc",
            "DNS:demo.etcd.svc.cluster.local",
            "DNS:demo.etcd.svc",
            "DNS:b.example.org",
        ] {
            assert!(sans.contains(&want.to_string()), "{want} missing from {sans:?}");
        }
        assert!(!sans.iter().any(|s| s.contains("demo-0")), "{sans:?}");
        // The record the PKI keeps reads back to the same description.
        assert_eq!(parse(&spec.to_toml().unwrap()).unwrap(), spec);
        let err = err_of(&format!("{GOOD}\n[kubernetes]\nnamespace = \"Etcd\"\n"));
        assert!(err.contains("kubernetes.namespace"), "{err}");
        let err = err_of(&format!("{GOOD}\n[kubernetes]\nnamespace = \"etcd\"\nname = \"{}\"\n", "a".repeat(60)));
        assert!(err.contains("kubernetes.name") && err.contains("-peer"), "{err}");
        let err = err_of(&format!("{GOOD}\n[kubernetes]\nnamespce = \"etcd\"\n"));
        assert!(err.contains("namespce"), "{err}");
    }

    #[test]
    fn shipped_tutorial_cluster_is_valid() {
        let spec = ClusterSpec::load(&crate::util::project_root().join("clusters/tutorial.toml")).unwrap();
        assert_eq!(spec.name, "tutorial");
        let ips: Vec<String> = spec.nodes.iter().map(|n| n.ips[0].to_string()).collect();
        assert_eq!(ips, ["10.0.1.204", "10.0.1.67", "10.0.1.236"]);
        assert!(spec.clients.contains(&"etcdctl".to_string()));
        assert!(spec.token.is_none());
        let described =
            ClusterSpec::load_described(&crate::util::project_root().join("clusters/tutorial.toml")).unwrap();
        assert_eq!(described.tuning.as_deref(), Some("medium"));
        assert_eq!(described.spec, spec);
        assert_eq!(spec.compaction, Compaction::Periodic { retention: "1h".into() });
    }

    #[test]
    fn a_monitoring_section_names_a_client_of_the_description() {
        let text = format!("{GOOD}\n[monitoring]\nscrape_client = \"etcdctl\"\n");
        let spec = parse(&text).unwrap();
        assert_eq!(spec.monitoring.as_ref().unwrap().scrape_client, "etcdctl");
        assert_eq!(parse(&spec.to_toml().unwrap()).unwrap(), spec, "kept through to_toml");
        let err = err_of(&format!("{GOOD}\n[monitoring]\nscrape_client = \"prometheus\"\n"));
        assert!(err.contains("monitoring.scrape_client") && err.contains("add it to clients"), "{err}");
        let err = err_of(&format!("{GOOD}\n[monitoring]\nscrape = \"etcdctl\"\n"));
        assert!(err.contains("unknown field"), "{err}");
        let dns_only = GOOD.replace("ips = [\"10.0.0.3\"]", "dns = [\"c.example.org\"]");
        let err = err_of(&format!("{dns_only}\n[monitoring]\nscrape_client = \"etcdctl\"\n"));
        assert!(err.contains("monitoring: node \"c\" has no IP"), "{err}");
    }

    #[test]
    fn the_prometheus_config_dir_is_absolute_and_defaults_to_debians() {
        let text = format!("{GOOD}\n[monitoring]\nscrape_client = \"etcdctl\"\n");
        assert_eq!(parse(&text).unwrap().monitoring.unwrap().config_dir(), "/etc/prometheus");
        let text = format!("{GOOD}\n[monitoring]\nscrape_client = \"etcdctl\"\nconfig_dir = \"/srv/prom/\"\n");
        let spec = parse(&text).unwrap();
        assert_eq!(spec.monitoring.as_ref().unwrap().config_dir(), "/srv/prom");
        assert_eq!(parse(&spec.to_toml().unwrap()).unwrap(), spec, "kept through to_toml");
        for (bad, why) in [
            ("etc/prometheus", "is not an absolute path"),
            ("/etc/../prometheus", "`..`"),
            ("/etc/prom etheus", "white space"),
            ("/", "the root directory"),
        ] {
            let err = err_of(&format!("{GOOD}\n[monitoring]\nscrape_client = \"etcdctl\"\nconfig_dir = {bad:?}\n"));
            assert!(err.contains("monitoring.config_dir") && err.contains(why), "{bad}: {err}");
            assert!(err.contains("absolute path, such as \"/etc/prometheus\""), "the fix is named: {err}");
        }
    }

    #[test]
    fn the_compaction_policy_defaults_to_an_hour_kept_and_a_bad_one_names_file_field_and_fix() {
        assert_eq!(parse(GOOD).unwrap().compaction, Compaction::default());
        let text = format!("{GOOD}\n[compaction]\nmode = \"revision\"\nretention = 5000\n");
        let spec = parse(&text).unwrap();
        assert_eq!(spec.compaction, Compaction::Revision { retention: 5000 });
        assert_eq!(parse(&spec.to_toml().unwrap()).unwrap(), spec, "kept through to_toml");
        let err = err_of(&format!("{GOOD}\n[compaction]\nmode = \"periodic\"\nretention = \"0s\"\n"));
        assert!(
            err.starts_with("test.toml: compaction.retention: \"0s\" is zero") && err.contains("mode = \"off\""),
            "{err}"
        );
        let err = err_of(&format!("{GOOD}\n[compaction]\nmode = \"periodic\"\nretention = \"10s\"\nevery = 1\n"));
        assert!(err.contains("test.toml") && err.contains("every"), "{err}");
        let short = parse(&format!("{GOOD}\n[compaction]\nmode = \"periodic\"\nretention = \"10s\"\n")).unwrap();
        assert!(short.warnings().iter().any(|w| w.contains("shorter than 5 minutes")), "{:?}", short.warnings());
    }

    #[test]
    fn tuning_is_optional() {
        assert_eq!(ClusterSpec::from_toml_described(GOOD, "t.toml").unwrap().tuning, None);
        let text = GOOD.replace("name = \"demo\"", "name = \"demo\"\ntuning = \"large\"");
        let described = ClusterSpec::from_toml_described(&text, "t.toml").unwrap();
        assert_eq!(described.tuning.as_deref(), Some("large"));
        assert_eq!(described.spec, parse(GOOD).unwrap());
    }

    #[test]
    fn bad_descriptions_name_the_field() {
        let cases = [
            (GOOD.replace("10.0.0.3", "10.0.0.300"), "nodes[2].ips[0]"),
            (GOOD.replace("10.0.0.3", "10.0.0.1"), "nodes[2].ips[0]"),
            (GOOD.replace("name = \"c\"", "name = \"a\""), "nodes[2].name"),
            (GOOD.replace("name = \"c\"", "name = \"Master_3\""), "nodes[2].name"),
            (GOOD.replace("name = \"demo\"", "name = \"demo\"\ncolour = \"red\""), "colour"),
            (GOOD.replace("ips = [\"10.0.0.3\"]", "ips = [\"10.0.0.3\"]\nport = 2379"), "port"),
            (GOOD.replace("b.example.org", "bad_name.org"), "nodes[1].dns[0]"),
            (GOOD.replace("[\"etcdctl\"]", "[\"etcdctl\", \"etcdctl\"]"), "clients[1]"),
            (GOOD.replace("[\"etcdctl\"]", "[\"../x\"]"), "clients[0]"),
            (GOOD.replace("10.0.0.3", "127.0.0.1"), "nodes[2].ips[0]"),
            ("name = \"demo\"\n".to_string(), "nodes"),
            (GOOD.replace("name = \"demo\"", "name = \"demo\"\ntoken = \"has space\""), "token"),
            (GOOD.replace("name = \"demo\"", "name = \"demo\"\ntuning = \"Huge One\""), "tuning"),
        ];
        for (text, field) in cases {
            let msg = err_of(&text);
            assert!(msg.contains(field), "error for {field} does not name it: {msg}");
        }
    }

    #[test]
    fn even_node_count_is_a_warning() {
        let text = GOOD.replace("[[nodes]]\nname = \"c\"\nips = [\"10.0.0.3\"]\n", "");
        let spec = parse(&text).unwrap();
        assert_eq!(spec.nodes.len(), 2);
        assert!(spec.warnings().iter().any(|w| w.contains("even")));
    }
}
