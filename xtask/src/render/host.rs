//! Per-node bundles. In: a checked cluster description, its tuning preset, its PKI directory
//! (`cargo xtask pki` layout) and the templates in `systemd/`. Out, per node, two file trees
//! laid out as they land on the host, and a tarball of each (numeric root owner, mtime
//! SOURCE_DATE_EPOCH):
//!
//! - the host bundle: `/etc/etcd/etcd.conf`, the hardened `etcd.service`, the backup service and
//!   timer, the defragmentation service and timer (the node's own time of day:
//!   [`defrag_calendar`]), sysusers.d and tmpfiles.d entries, the node's certificates, the
//!   operator's etcdctl settings and client certificate;
//! - the host side of the portable service: the same without units or user (but a drop-in with
//!   the node's defragmentation time for the image's timer), and an `etcd.conf` without the TLS
//!   file variables (the portable unit passes those as flags into `${CREDENTIALS_DIRECTORY}`).
//!
//! Every etcd setting comes from [`config::node_env`] plus the tuning preset.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config::{self, node_env, PkiFacts, TargetPaths, CLIENT_PORT, TLS_FILES};
use super::monitoring;
use super::template;
use super::tuning::Preset;
use crate::image::layer::{self, Entry};
use crate::pki::cluster::{ClusterSpec, NodeSpec};
use crate::pki::layout::{PkiLayout, CA_CERT, CLIENT_CERT, CLIENT_KEY};
use crate::util::write_atomic;

/// Where the host bundle puts the operator's client certificate.
pub const ETCDCTL_DIR: &str = "/etc/etcd/etcdctl";

/// One file of a bundle: its path on the host (without the leading `/`), mode and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// A file tree for one node: directories we own (created with their mode) and files.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Directories this bundle owns (parents like `etc/` are the host's and left out).
    pub dirs: Vec<(String, u32)>,
    pub files: Vec<BundleFile>,
}

impl Tree {
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) {
        self.files.push(BundleFile { path: path.to_string(), mode, data: data.into() });
    }

    /// Writes the tree under `root` with the modes given.
    pub fn write(&self, root: &Path) -> Result<()> {
        for (dir, mode) in &self.dirs {
            let p = root.join(dir);
            fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                .with_context(|| format!("cannot set the mode of {}", p.display()))?;
        }
        for f in &self.files {
            write_atomic(&root.join(&f.path), &f.data, f.mode)?;
        }
        Ok(())
    }

    /// The tree as a tar archive: sorted, owned by uid/gid 0, mtime `epoch`.
    pub fn tar(&self, epoch: u64) -> Result<Vec<u8>> {
        let mut entries: Vec<Entry> = self.dirs.iter().map(|(d, m)| Entry::dir(d, *m, 0, 0)).collect();
        entries.extend(self.files.iter().map(|f| Entry::inline(&f.path, f.mode, 0, 0, f.data.clone())));
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut out = Vec::new();
        layer::write_tar(&entries, epoch, &mut out).context("cannot write the bundle tarball")?;
        Ok(out)
    }
}

/// Everything rendered for one node.
#[derive(Debug, Clone)]
pub struct NodeBundle {
    pub node: String,
    pub host: Tree,
    pub portable: Tree,
    pub install_md: String,
}

/// What every node of a cluster shares.
pub struct ClusterInputs<'a> {
    pub spec: &'a ClusterSpec,
    /// The chosen preset and its name.
    pub tuning: Option<(&'a str, &'a Preset)>,
    pub pki: &'a PkiLayout,
    pub facts: &'a PkiFacts,
    /// The client identity whose certificate the operator's etcdctl and the backup use.
    pub client: &'a str,
    /// What etcd needs to run on the hosts' architecture (`ETCD_UNSUPPORTED_ARCH`), or nothing.
    pub runtime_env: &'a BTreeMap<String, String>,
    /// The etcd version the hosts run: its release line's settings go into every node's file.
    pub etcd_version: &'a str,
    /// The step of a switch from plain http to mutual TLS (`TlsStage::Tls`: none).
    pub tls_stage: config::TlsStage,
}

/// The client identity for etcdctl: `wanted`, else `etcdctl` if issued, else the first client.
/// With an `[access]` section it must be a root client: the backup takes snapshots and the
/// defragmentation unit defragments, which etcd allows root only.
pub fn pick_client<'a>(spec: &'a ClusterSpec, wanted: Option<&'a str>, cluster: &Path) -> Result<&'a str> {
    let client = pick_any_client(spec, wanted, cluster)?;
    if let Some(access) = &spec.access {
        if !access.roots().any(|r| r == client) {
            bail!(
                "{}: access.{client}: the operator's etcdctl, the backup and the defragmentation units use {client:?}'s \
                 certificate, and snapshots and defragmentation are root's once auth is on: make it \"root\" there, or \
                 pass --client with one of {:?}",
                cluster.display(),
                access.roots().collect::<Vec<_>>()
            );
        }
    }
    Ok(client)
}

fn pick_any_client<'a>(spec: &'a ClusterSpec, wanted: Option<&'a str>, cluster: &Path) -> Result<&'a str> {
    if let Some(w) = wanted {
        return match spec.clients.iter().find(|c| c.as_str() == w) {
            Some(c) => Ok(c),
            None => bail!(
                "--client {w}: {} lists no such client (clients = {:?}); add it there or pick one of those",
                cluster.display(),
                spec.clients
            ),
        };
    }
    spec.clients
        .iter()
        .find(|c| c.as_str() == "etcdctl")
        .or_else(|| spec.clients.first())
        .map(String::as_str)
        .with_context(|| {
            format!(
                "{}: clients: empty, so no etcdctl or backup could authenticate: add e.g. clients = [\"etcdctl\"]",
                cluster.display()
            )
        })
}

/// The environment file of a node: `node_env` plus the tuning preset, with a header.
pub fn etcd_conf(inputs: &ClusterInputs<'_>, node: &NodeSpec, portable: bool) -> Result<String> {
    let env = node_env(inputs.spec, node, inputs.facts, &TargetPaths::standard(), inputs.etcd_version)?;
    let mut env = config::staged_env(&env, inputs.tls_stage);
    if portable {
        // The portable unit passes these itself (TLS flags and its own Environment=).
        for (key, _) in TLS_FILES {
            env.remove(key);
        }
    } else {
        env.extend(inputs.runtime_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let tuning_line = match inputs.tuning {
        Some((name, preset)) => {
            env.extend(preset.env());
            format!("Tuning: preset {name} of systemd/tuning.toml: {}.", preset.description)
        }
        None => "Tuning: none chosen (tuning = ... in the cluster description), etcd's defaults apply.".to_string(),
    };
    let what = if portable {
        "Read on the host by the portable etcd.service (EnvironmentFile=). The TLS file flags are\n\
         not here: the unit passes them, pointing at its credentials (LoadCredential=)."
    } else {
        "Read by etcd.service (EnvironmentFile=). Certificates: /etc/etcd/pki/."
    };
    let mut header = format!(
        "etcd member {} of cluster {}, generated by `cargo xtask render`: do not edit, render again.\n{what}\n{tuning_line}",
        node.name, inputs.spec.name
    );
    if inputs.tls_stage != config::TlsStage::Tls {
        header.push_str(&format!(
            "\nStep `{}` of switching a running plain-http cluster to mutual TLS (docs/day-2.md: \"Switch a\n\
             plain-http cluster to mutual TLS\"); render with --tls-stage tls for the last one.",
            inputs.tls_stage.as_str()
        ));
    }
    Ok(config::env_file(&header, &env))
}

/// The operator's etcdctl settings: every member's client URL and the client certificate.
pub fn etcdctl_env(inputs: &ClusterInputs<'_>) -> Result<String> {
    let mut endpoints = Vec::new();
    for n in &inputs.spec.nodes {
        endpoints.push(config::url("https", &config::primary_ip(n)?, CLIENT_PORT));
    }
    let env = BTreeMap::from([
        ("ETCDCTL_API".to_string(), "3".to_string()),
        ("ETCDCTL_ENDPOINTS".to_string(), endpoints.join(",")),
        ("ETCDCTL_CACERT".to_string(), format!("{ETCDCTL_DIR}/{CA_CERT}")),
        ("ETCDCTL_CERT".to_string(), format!("{ETCDCTL_DIR}/{CLIENT_CERT}")),
        ("ETCDCTL_KEY".to_string(), format!("{ETCDCTL_DIR}/{CLIENT_KEY}")),
    ]);
    let header = format!(
        "etcdctl settings of cluster {} (client certificate of {:?}), generated by `cargo xtask render`.\n\
         Use: set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl endpoint health",
        inputs.spec.name, inputs.client
    );
    Ok(config::env_file(&header, &env))
}

/// When member `i` of a description defragments (`OnCalendar=` of etcd-defrag.timer): daily,
/// the first member at 05:10, each next one [`DEFRAG_SPACING_MIN`] minutes later, so that no two members of a cluster
/// defragment at once; ten minutes past the members' snapshot times of the default hourly
/// [backup] (:00, :20, :40 with three members), so that none snapshots while its member
/// defragments (a defragmentation blocks the member). Past midnight it wraps (a cluster would need 72 members to meet itself).
pub fn defrag_calendar(i: usize) -> String {
    format!("*-*-* {}:00", defrag_time(i))
}

/// Member `i`'s time of day of [`defrag_calendar`], `HH:MM`.
pub fn defrag_time(i: usize) -> String {
    let minute = (DEFRAG_FIRST_MIN + DEFRAG_SPACING_MIN * i) % (24 * 60);
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// The first member's defragmentation, in minutes after midnight (host time): 05:10.
const DEFRAG_FIRST_MIN: usize = 5 * 60 + 10;
/// Minutes between two members' defragmentations: a defragmentation rewrites the database, about
/// three minutes for 8 GiB (the largest quota of systemd/tuning.toml) at 50 MB/s; the rest is
/// margin, and the service's health check of every member covers a longer one.
pub const DEFRAG_SPACING_MIN: usize = 20;

/// Where each form keeps its snapshots on the host: the host bundle's tmpfiles.d directory, the
/// portable unit's StateDirectory= (a dynamic user's, under /var/lib/private).
pub const BACKUP_DIR_HOST: &str = "/var/backups/etcd";
pub const BACKUP_DIR_PORTABLE: &str = "/var/lib/private/etcd-backup";
/// Where the host keeps the ssh key and the pinned host key of the backup host.
pub const BACKUP_SSH_DIR: &str = "/etc/etcd/backup";
/// The ship step's script on the host.
pub const BACKUP_SHIP: &str = "/usr/local/lib/etcd/etcd-backup-ship";

/// The backup's settings: the member's own loopback client URL, which [`node_env`] always
/// listens on, and what etcd-backup-ship.service needs (`BACKUP_*`: the form's snapshot
/// directory, how many to keep, the interval, the backup host).
pub fn backup_env(inputs: &ClusterInputs<'_>, node: &NodeSpec, portable: bool) -> Result<String> {
    let b = &inputs.spec.backup;
    let mut vars = vec![
        ("BACKUP_DIR", if portable { BACKUP_DIR_PORTABLE } else { BACKUP_DIR_HOST }.to_string()),
        ("BACKUP_KEEP", b.keep.to_string()),
        ("BACKUP_INTERVAL_SECONDS", b.interval_s.to_string()),
        ("BACKUP_CLUSTER", inputs.spec.name.clone()),
        ("BACKUP_MEMBER", node.name.clone()),
    ];
    if let Some(t) = &b.target {
        vars.push(("BACKUP_TARGET", format!("{}@{}", t.user, t.host)));
        vars.push(("BACKUP_PORT", t.port.to_string()));
    }
    let mut text = loopback_env(inputs, node, "etcd-backup.service")?;
    text.push_str(&format!(
        "# etcd-backup-ship.service: every {} ({} kept), {}\n",
        b.interval,
        b.keep,
        match &b.target {
            Some(t) => format!(
                "shipped with rsync over ssh to {}@{}:{}",
                t.user,
                t.host,
                t.member_dir(&inputs.spec.name, &node.name)
            ),
            None => "kept on this host only ([backup] has no target)".to_string(),
        }
    ));
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    Ok(text)
}

/// The defragmentation's settings: the member's own loopback client URL, as the backup's, so
/// that etcd-defrag.service defragments its own member and no other.
pub fn defrag_env(inputs: &ClusterInputs<'_>, node: &NodeSpec) -> Result<String> {
    loopback_env(inputs, node, "etcd-defrag.service")
}

/// etcdctl's settings for `unit` of the node: the member's own loopback client URL.
fn loopback_env(inputs: &ClusterInputs<'_>, node: &NodeSpec, unit: &str) -> Result<String> {
    let ip = config::primary_ip(node)?;
    let loopback: std::net::IpAddr = if ip.is_ipv6() { "::1".parse()? } else { "127.0.0.1".parse()? };
    let endpoint = config::url("https", &loopback, CLIENT_PORT);
    let env = node_env(inputs.spec, node, inputs.facts, &TargetPaths::standard(), inputs.etcd_version)?;
    let listens = env.get("ETCD_LISTEN_CLIENT_URLS").map(String::as_str).unwrap_or("");
    if !listens.split(',').any(|u| u == endpoint) {
        bail!("node {}: etcd does not listen on {endpoint} (ETCD_LISTEN_CLIENT_URLS={listens}), so {unit} could not reach it", node.name);
    }
    let env =
        BTreeMap::from([("ETCDCTL_API".to_string(), "3".to_string()), ("ETCDCTL_ENDPOINTS".to_string(), endpoint)]);
    let header = format!("Where {unit} of member {} reaches etcd, generated by `cargo xtask render`.", node.name);
    Ok(config::env_file(&header, &env))
}

fn read_pki(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| {
        format!(
            "cannot read {}: issue the PKI again with `cargo xtask pki --cluster FILE` (render does so itself)",
            path.display()
        )
    })
}

/// The certificates and keys of a node and of the operator, with the modes they have in the
/// tarball (keys root-only; the host bundle's tmpfiles.d hands the node's keys to the etcd group).
fn add_certificates(tree: &mut Tree, inputs: &ClusterInputs<'_>, node: &NodeSpec) -> Result<()> {
    let node_dir = inputs.pki.node_dir(&node.name);
    for (_, file) in TLS_FILES {
        let mode = if file.ends_with(".key") { 0o400 } else { 0o644 };
        tree.file(&format!("etc/etcd/pki/{file}"), mode, read_pki(&node_dir.join(file))?);
    }
    let client_dir = inputs.pki.client_dir(inputs.client);
    for (file, mode) in [(CA_CERT, 0o644), (CLIENT_CERT, 0o644), (CLIENT_KEY, 0o400)] {
        tree.file(&format!("{}/{file}", ETCDCTL_DIR.trim_start_matches('/')), mode, read_pki(&client_dir.join(file))?);
    }
    tree.file(monitoring::CRL_TEXTFILE, 0o644, monitoring::crl_textfile(&inputs.spec.name, &node.name, &node_dir)?);
    tree.dirs.push(("etc/etcd".into(), 0o755));
    tree.dirs.push(("etc/etcd/pki".into(), 0o755));
    tree.dirs.push((ETCDCTL_DIR.trim_start_matches('/').into(), 0o700));
    Ok(())
}

/// What both forms need on the host to keep and ship their snapshots: the ship step (script
/// and unit) and, with a backup host, the node's ssh key (root only) and the backup host's
/// pinned key.
fn add_backup_shipping(tree: &mut Tree, inputs: &ClusterInputs<'_>, node: &NodeSpec) -> Result<()> {
    tree.dirs.push(("usr/local/lib/etcd".into(), 0o755));
    tree.file(BACKUP_SHIP.trim_start_matches('/'), 0o755, template::read("host/etcd-backup-ship")?);
    tree.file("etc/systemd/system/etcd-backup-ship.service", 0o644, template::read("host/etcd-backup-ship.service")?);
    let Some(target) = &inputs.spec.backup.target else { return Ok(()) };
    let dir = BACKUP_SSH_DIR.trim_start_matches('/');
    tree.dirs.push((dir.into(), 0o700));
    let (key, _) = inputs.pki.backup_key(&node.name);
    tree.file(&format!("{dir}/id_ed25519"), 0o600, read_pki(&key)?);
    tree.file(&format!("{dir}/known_hosts"), 0o644, target.known_hosts_line());
    Ok(())
}

/// The backup host's `authorized_keys`: one line per member, its key allowed to run nothing but
/// rsync, through `rrsync`, confined to that member's directory (`DIR/<cluster>/<node>`).
pub fn backup_authorized_keys(spec: &ClusterSpec, pki: &PkiLayout) -> Result<Option<String>> {
    let Some(target) = &spec.backup.target else { return Ok(None) };
    let mut out = format!(
        "# The members of etcd cluster {} shipping their snapshots, written by `cargo xtask render`: for\n\
         # ~{}/.ssh/authorized_keys on {}. Each key runs nothing but rsync (rrsync, Debian's rsync\n\
         # package) confined to its member's directory; create those first (docs/systemd-hosts.md).\n",
        spec.name, target.user, target.host
    );
    for node in &spec.nodes {
        let (_, public) = pki.backup_key(&node.name);
        let key = String::from_utf8(read_pki(&public)?).with_context(|| format!("{} is not text", public.display()))?;
        out.push_str(&format!(
            "restrict,command=\"/usr/bin/rrsync {}\" {}\n",
            target.member_dir(&spec.name, &node.name),
            key.trim()
        ));
    }
    Ok(Some(out))
}

/// Renders both trees and the install notes of `node`.
pub fn render_node(inputs: &ClusterInputs<'_>, node: &NodeSpec) -> Result<NodeBundle> {
    let etcdctl = etcdctl_env(inputs)?;
    let index = inputs.spec.nodes.iter().position(|n| n.name == node.name).context("a node of the description")?;
    let schedule =
        [("NODE", node.name.clone()), ("CLUSTER", inputs.spec.name.clone()), ("ON_CALENDAR", defrag_calendar(index))];
    let backup = &inputs.spec.backup;
    let backup_schedule = [
        ("NODE", node.name.clone()),
        ("CLUSTER", inputs.spec.name.clone()),
        ("INTERVAL", backup.interval.clone()),
        ("ON_CALENDAR", backup.on_calendar(index, inputs.spec.nodes.len())),
    ];

    let mut host = Tree::default();
    add_certificates(&mut host, inputs, node)?;
    host.file("etc/etcd/etcd.conf", 0o644, etcd_conf(inputs, node, false)?);
    host.file("etc/etcd/etcdctl.env", 0o644, etcdctl.clone());
    host.file("etc/etcd/etcd-backup.env", 0o644, backup_env(inputs, node, false)?);
    host.file("etc/etcd/etcd-defrag.env", 0o644, defrag_env(inputs, node)?);
    for unit in ["etcd.service", "etcd-backup.service", "etcd-defrag.service"] {
        host.file(&format!("etc/systemd/system/{unit}"), 0o644, template::read(&format!("host/{unit}"))?);
    }
    for (timer, fields) in [("etcd-defrag.timer", &schedule[..]), ("etcd-backup.timer", &backup_schedule[..])] {
        let path = format!("host/{timer}.in");
        host.file(
            &format!("etc/systemd/system/{timer}"),
            0o644,
            template::fill(&format!("systemd/{path}"), &template::read(&path)?, fields)?,
        );
    }
    add_backup_shipping(&mut host, inputs, node)?;
    host.file("usr/lib/sysusers.d/etcd.conf", 0o644, template::read("host/sysusers.conf")?);
    host.file("usr/lib/tmpfiles.d/etcd.conf", 0o644, template::read("host/tmpfiles.conf")?);

    let mut portable = Tree::default();
    add_certificates(&mut portable, inputs, node)?;
    portable.file("etc/etcd/etcd.conf", 0o644, etcd_conf(inputs, node, true)?);
    portable.file("etc/etcd/etcdctl.env", 0o644, etcdctl);
    portable.file("etc/etcd/etcd-backup.env", 0o644, backup_env(inputs, node, true)?);
    portable.file("etc/etcd/etcd-defrag.env", 0o644, defrag_env(inputs, node)?);
    for (unit, dropin, fields) in [
        ("etcd-defrag.timer", "portable/defrag-schedule.conf.in", &schedule[..]),
        ("etcd-backup.timer", "portable/backup-schedule.conf.in", &backup_schedule[..]),
    ] {
        portable.dirs.push((format!("etc/systemd/system/{unit}.d"), 0o755));
        portable.file(
            &format!("etc/systemd/system/{unit}.d/schedule.conf"),
            0o644,
            template::fill(&format!("systemd/{dropin}"), &template::read(dropin)?, fields)?,
        );
    }
    portable.dirs.push(("etc/systemd/system/etcd-backup.service.d".into(), 0o755));
    portable.file(
        "etc/systemd/system/etcd-backup.service.d/ship.conf",
        0o644,
        template::read("portable/backup-ship.conf")?,
    );
    add_backup_shipping(&mut portable, inputs, node)?;
    portable.file("etc/systemd/portable/profile/etcd/service.conf", 0o644, template::read("portable/profile.conf")?);

    let install_md = template::fill(
        "systemd/host/INSTALL.md.in",
        &template::read("host/INSTALL.md.in")?,
        &[
            ("NODE", node.name.clone()),
            ("CLUSTER", inputs.spec.name.clone()),
            ("ADDRESS", config::primary_ip(node)?.to_string()),
            ("PEER_URL", config::url("https", &config::primary_ip(node)?, config::PEER_PORT)),
            ("COUNT", inputs.spec.nodes.len().to_string()),
            ("TUNING", inputs.tuning.map(|(n, _)| n.to_string()).unwrap_or_else(|| "etcd defaults".into())),
            ("CLIENT", inputs.client.to_string()),
            ("VERSION", inputs.etcd_version.to_string()),
            ("DEFRAG_TIME", defrag_time(index)),
            ("BACKUP_INTERVAL", backup.interval.clone()),
            ("BACKUP_CALENDAR", backup.on_calendar(index, inputs.spec.nodes.len())),
            ("BACKUP_KEEP", backup.keep.to_string()),
            (
                "BACKUP_WHERE",
                match &backup.target {
                    Some(t) => format!(
                        "ships it with rsync over ssh to {}@{}:{}",
                        t.user,
                        t.host,
                        t.member_dir(&inputs.spec.name, &node.name)
                    ),
                    None => "keeps it on this host only (the cluster file's [backup] has no target)".into(),
                },
            ),
        ],
    )?;
    Ok(NodeBundle { node: node.name.clone(), host, portable, install_md })
}

/// Writes a node's bundle into `out` (the cluster's staging directory): `<node>/`,
/// `<node>.tar`, `<node>.portable/`, `<node>.portable.tar`, `<node>.INSTALL.md`.
pub fn write_node(bundle: &NodeBundle, out: &Path, epoch: u64) -> Result<()> {
    let n = &bundle.node;
    bundle.host.write(&out.join(n))?;
    write_atomic(&out.join(format!("{n}.tar")), &bundle.host.tar(epoch)?, 0o600)?;
    bundle.portable.write(&out.join(format!("{n}.portable")))?;
    write_atomic(&out.join(format!("{n}.portable.tar")), &bundle.portable.tar(epoch)?, 0o600)?;
    write_atomic(&out.join(format!("{n}.INSTALL.md")), bundle.install_md.as_bytes(), 0o644)?;
    Ok(())
}

/// The ```sh blocks of a Markdown text (an INSTALL.md, the README), in order, as written: the
/// steps `smoke --engine systemd` runs verbatim.
pub fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_defragments_at_its_own_time_and_the_image_at_the_first_ones() {
        let times: Vec<String> = (0..5).map(defrag_time).collect();
        assert_eq!(times, ["05:10", "05:30", "05:50", "06:10", "06:30"]);
        assert_eq!(defrag_calendar(1), "*-*-* 05:30:00");
        // A cluster that reaches midnight wraps instead of naming hour 24.
        assert_eq!(defrag_time(57), "00:10");
        // The portable image's own timer, for a host without its node's drop-in, is the first
        // member's time.
        let image = template::read("portable/etcd-defrag.timer").unwrap();
        assert!(image.lines().any(|l| l == format!("OnCalendar={}", defrag_calendar(0))), "{image}");
        // Never at a member's snapshot time of the default hourly [backup] (minutes 0, 20, 40
        // of three members), which a defragmentation would block.
        let backup = crate::pki::backup::Backup::default();
        let minutes: Vec<String> = (0..3).map(|i| backup.on_calendar(i, 3)[6..].to_string()).collect();
        assert_eq!(minutes, ["00/1:00:00", "00/1:20:00", "00/1:40:00"]);
        assert!(times.iter().all(|t| !["00", "20", "40"].contains(&&t[3..])), "{times:?}");
    }

    #[test]
    fn with_access_rules_the_bundles_identity_is_root() {
        let path = crate::util::project_root().join("clusters/tutorial.toml");
        let spec = ClusterSpec::load(&path).unwrap();
        assert_eq!(pick_client(&spec, None, &path).unwrap(), "etcdctl");
        let err = pick_client(&spec, Some("kube-apiserver"), &path).unwrap_err().to_string();
        assert!(err.contains("access.kube-apiserver") && err.contains("make it \"root\""), "{err}");
        let open = ClusterSpec { access: None, ..spec };
        assert_eq!(pick_client(&open, Some("kube-apiserver"), &path).unwrap(), "kube-apiserver");
    }
}
