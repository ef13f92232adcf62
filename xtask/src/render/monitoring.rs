//! Prometheus alerting and recording rules for a cluster, generated (never hand-copied) so that
//! the job name, the cluster label and the runbooks they point to cannot drift from the rest
//! of what `render` writes. Each alert names the source of its threshold in its `source`
//! annotation: most are the etcd project's own monitoring mixin (etcd-io/etcd,
//! `contrib/mixin`); the NOSPACE alert reads etcd's gRPC status for "database space exceeded",
//! and the certificate alert uses the warning window of `cargo xtask pki check`.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::pki::cluster::{ClusterSpec, KubeNames, MonitoringSpec};
use crate::util::write_atomic;

/// The scrape job of the members' metrics; every rule selects on it.
pub const JOB: &str = "etcd";
/// The scrape job that probes the members' TLS ports (the blackbox exporter's `tls_connect`):
/// certificate expiry is not among etcd's metrics.
pub const TLS_JOB: &str = "etcd-tls";
/// The scrape job of node exporter on each host, whose textfile collector reads what
/// etcd-backup-ship writes after each good snapshot (`etcd_backup_*`) and what the CRLs the
/// bundle delivered say (`etcd_crl_*`).
pub const BACKUP_JOB: &str = "etcd-backup";
/// Where the host bundles put what the member's CRLs say, for node exporter's textfile collector
/// (`etcd_crl_*`; the directory Debian's prometheus-node-exporter reads), relative to `/`: it
/// travels in the bundle beside the CRLs, so it says what this member reads.
pub const CRL_TEXTFILE: &str = "var/lib/prometheus/node-exporter/etcd-crl.prom";
/// Where node exporter listens on each host (its default).
pub const NODE_EXPORTER_PORT: u16 = 9100;
/// The directory `render` writes under its output, and the rules file's name in it.
pub const DIR: &str = "monitoring";
pub const RULES_FILE: &str = "etcd-rules.yml";
/// Days before expiry the certificate alert warns: `cargo xtask pki check --warn-days`' default.
pub const CERT_WARN_DAYS: u32 = 30;

const MIXIN: &str = "etcd monitoring mixin (etcd-io/etcd contrib/mixin/mixin.libsonnet)";

/// The rules' time: production (scale 1), or compressed `scale` times for the smoke test, which
/// cannot wait ten minutes per fault. `for:` durations are divided by the scale; range windows
/// too, but never below four scrapes of the compressed configuration.
pub struct Clock {
    pub scale: u64,
}

impl Clock {
    pub const PRODUCTION: Clock = Clock { scale: 1 };

    fn for_(&self, secs: u64) -> String {
        duration(secs / self.scale)
    }

    fn window(&self, secs: u64) -> String {
        duration(if self.scale == 1 { secs } else { (secs / self.scale).max(4) })
    }
}

/// A Prometheus duration, in the largest unit that divides it.
fn duration(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// One alert: its name, PromQL, `for:`, severity, what it means, and where its threshold is from.
struct Alert {
    name: &'static str,
    expr: String,
    for_: String,
    severity: &'static str,
    summary: &'static str,
    description: &'static str,
    source: String,
    /// What to do: a page of `docs/` and a heading on it, relative to the repository root.
    runbook: &'static str,
}

/// The recording rules: the latency percentiles and ratios the alerts and a dashboard share.
fn recording_rules(sel: &str, c: &Clock) -> Vec<(String, String)> {
    let w5 = c.window(300);
    let p99 = |metric: &str| {
        format!("histogram_quantile(0.99, sum by (cluster, instance, le) (rate({metric}_bucket{{{sel}}}[{w5}])))")
    };
    vec![
        ("etcd:wal_fsync_duration_seconds:p99_5m".into(), p99("etcd_disk_wal_fsync_duration_seconds")),
        ("etcd:backend_commit_duration_seconds:p99_5m".into(), p99("etcd_disk_backend_commit_duration_seconds")),
        ("etcd:peer_round_trip_time_seconds:p99_5m".into(), p99("etcd_network_peer_round_trip_time_seconds")),
        (
            "etcd:db_quota_used:ratio".into(),
            format!("etcd_mvcc_db_total_size_in_bytes{{{sel}}} / etcd_server_quota_backend_bytes{{{sel}}}"),
        ),
    ]
}

/// The alerts. Where the mixin sums over the members `without (instance)`, these also leave out
/// `member`, the label our scrape configuration puts on each target: kept, it would split every
/// sum into one group per member, and one member down would read as a lost quorum.
fn alerts(sel: &str, tls_sel: &str, c: &Clock) -> Vec<Alert> {
    let backup_sel = format!("job=\"{BACKUP_JOB}\"");
    let mixin = || MIXIN.to_string();
    vec![
        Alert {
            name: "etcdMembersDown",
            expr: format!(
                "max without (source) (\n  label_replace(sum without (instance, member) (up{{{sel}}} == bool 0), \"source\", \
                 \"scrape\", \"\", \"\")\nor\n  label_replace(count without (To) (sum without (instance, member) \
                 (rate(etcd_network_peer_sent_failures_total{{{sel}}}[{w2}])) > 0.01), \"source\", \"peers\", \"\", \
                 \"\")\n)\n> 0",
                w2 = c.window(120)
            ),
            for_: c.for_(600),
            severity: "critical",
            summary: "etcd cluster members are down.",
            description: "{{ $value }} member(s) of cluster {{ $labels.cluster }} do not answer the scrape or \
                          their peers cannot send to them.",
            // The mixin's `or` of the two counts keeps only the first when both carry the same
            // labels (a member up but cut off from its peers was never counted): each is tagged.
            source: format!("{MIXIN}, its two counts kept apart"),
            runbook: "docs/day-2.md#replace-a-lost-member",
        },
        Alert {
            name: "etcdInsufficientMembers",
            expr: format!(
                "sum without (instance, member) (up{{{sel}}} == bool 1)\n< ((count without (instance, member) (up{{{sel}}}) + 1) / 2)"
            ),
            for_: c.for_(180),
            severity: "critical",
            summary: "etcd cluster has lost its quorum.",
            description: "Only {{ $value }} member(s) of cluster {{ $labels.cluster }} are up: fewer than a majority, \
                          so no write and no linearizable read can succeed.",
            source: mixin(),
            runbook: "docs/day-2.md#replace-a-lost-member",
        },
        Alert {
            name: "etcdNoLeader",
            expr: format!("etcd_server_has_leader{{{sel}}} == 0"),
            for_: c.for_(60),
            severity: "critical",
            summary: "etcd member has no leader.",
            description: "Member {{ $labels.instance }} of cluster {{ $labels.cluster }} has no leader: it refuses \
                          writes and linearizable reads.",
            source: mixin(),
            runbook: "docs/day-2.md#replace-a-lost-member",
        },
        Alert {
            name: "etcdHighNumberOfLeaderChanges",
            expr: format!(
                "increase((max without (instance, member) (etcd_server_leader_changes_seen_total{{{sel}}}) or \
                 0*absent(etcd_server_leader_changes_seen_total{{{sel}}}))[{w15}:{step}]) >= 4",
                w15 = c.window(900),
                step = c.window(60)
            ),
            for_: c.for_(300),
            severity: "warning",
            summary: "etcd cluster has frequent leader changes.",
            description:
                "{{ printf \"%.0f\" $value }} leader changes in 15 minutes in cluster {{ $labels.cluster }}: look for \
                          starved CPU, slow disks or a lossy network between members.",
            source: mixin(),
            runbook: "docs/monitoring.md#what-each-alert-means",
        },
        Alert {
            name: "etcdHighNumberOfFailedProposals",
            expr: format!("rate(etcd_server_proposals_failed_total{{{sel}}}[{}]) > 5", c.window(900)),
            for_: c.for_(900),
            severity: "warning",
            summary: "etcd proposals are failing.",
            description: "{{ $value }} proposals per second fail on {{ $labels.instance }} (leader elections or a \
                          lost quorum).",
            source: mixin(),
            runbook: "docs/monitoring.md#what-each-alert-means",
        },
        Alert {
            name: "etcdHighFsyncDurations",
            expr: "etcd:wal_fsync_duration_seconds:p99_5m > 0.5".into(),
            for_: c.for_(600),
            severity: "warning",
            summary: "etcd WAL fsync is slow.",
            description: "99th percentile WAL fsync is {{ $value }}s on {{ $labels.instance }}; etcd wants a disk \
                          that syncs in under 10 ms.",
            source: mixin(),
            runbook: "docs/monitoring.md#what-each-alert-means",
        },
        Alert {
            name: "etcdHighFsyncDurations",
            expr: "etcd:wal_fsync_duration_seconds:p99_5m > 1".into(),
            for_: c.for_(600),
            severity: "critical",
            summary: "etcd WAL fsync is very slow.",
            description: "99th percentile WAL fsync is {{ $value }}s on {{ $labels.instance }}: heartbeats are \
                          late and elections follow.",
            source: mixin(),
            runbook: "docs/monitoring.md#what-each-alert-means",
        },
        Alert {
            name: "etcdHighCommitDurations",
            expr: "etcd:backend_commit_duration_seconds:p99_5m > 0.25".into(),
            for_: c.for_(600),
            severity: "warning",
            summary: "etcd backend commits are slow.",
            description: "99th percentile backend commit is {{ $value }}s on {{ $labels.instance }}.",
            source: mixin(),
            runbook: "docs/monitoring.md#what-each-alert-means",
        },
        Alert {
            name: "etcdDatabaseQuotaLowSpace",
            expr: "etcd:db_quota_used:ratio * 100 > 95".into(),
            for_: c.for_(600),
            severity: "critical",
            summary: "etcd database is close to its quota.",
            description: "The database of {{ $labels.instance }} uses {{ $value }}% of --quota-backend-bytes: \
                          compact and defragment before etcd refuses writes.",
            source: mixin(),
            runbook: "docs/day-2.md#database-space-exceeded-and-a-full-data-disk",
        },
        Alert {
            name: "etcdNoSpace",
            expr: format!(
                "sum without (grpc_method, grpc_service, grpc_type) (\n  \
                 increase(grpc_server_handled_total{{{sel}, grpc_code=\"ResourceExhausted\"}}[{w1}])\n) > 0",
                w1 = c.window(60)
            ),
            for_: c.for_(0),
            severity: "critical",
            summary: "etcd refuses writes: database space exceeded (NOSPACE alarm).",
            description: "{{ $labels.instance }} answered {{ $value }} request(s) in the last minute with \
                          ResourceExhausted, the code of \"mvcc: database space exceeded\": the NOSPACE alarm is \
                          raised and stays until `etcdctl alarm disarm`.",
            source: "etcd's gRPC errors (api/v3rpc/rpctypes: ErrGRPCNoSpace is codes.ResourceExhausted); any \
                     refused write is an incident"
                .into(),
            runbook: "docs/day-2.md#database-space-exceeded-and-a-full-data-disk",
        },
        Alert {
            name: "etcdCertificateExpiresSoon",
            expr: format!("probe_ssl_earliest_cert_expiry{{{tls_sel}}} - time() < {CERT_WARN_DAYS} * 86400"),
            for_: c.for_(3600),
            severity: "warning",
            summary: "An etcd certificate expires soon.",
            description: "A certificate served at {{ $labels.instance }} expires in less than the warning window \
                          ({{ $value | humanizeDuration }} left): renew it (`cargo xtask pki renew`).",
            source: format!("the warning window of `cargo xtask pki check` (--warn-days {CERT_WARN_DAYS})"),
            runbook: "docs/day-2.md#renew-the-certificates-no-restart",
        },
        Alert {
            name: "etcdCrlExpiresSoon",
            // etcd 3.4 ignores a CRL's next-update (it compares serials only), so a stale CRL
            // breaks nothing there; every other reader of the file (openssl, Go's and rustls'
            // verifiers) refuses it, and a CRL nobody re-signs is one nobody delivers either.
            expr: format!("etcd_crl_next_update_timestamp_seconds{{{backup_sel}}} - time() < {CERT_WARN_DAYS} * 86400"),
            for_: c.for_(3600),
            severity: "warning",
            summary: "A CRL an etcd member reads reaches its next-update soon.",
            description: "The {{ $labels.crl }} CRL on member {{ $labels.member }} of cluster {{ $labels.cluster }} \
                          reaches its next-update in {{ $value | humanizeDuration }}: re-sign it (`cargo xtask pki \
                          renew`), render and deliver it with INSTALL.md's renewal block.",
            source: format!(
                "the warning window of `cargo xtask pki check` (--warn-days {CERT_WARN_DAYS}), which watches the \
                 CRLs' next-update in the PKI directory"
            ),
            runbook: "docs/day-2.md#revoke-a-certificate",
        },
        Alert {
            name: "etcdCertificateExpiryUnknown",
            // Without a probe there is no expiry series, and the alert above can never fire: a
            // probe that fails, or a member whose metrics are scraped but whose TLS port has no
            // probe series at all (the exporter down, its module or certificate unreadable, the
            // `etcd-tls` job missing), fires this one instead of leaving it quiet.
            expr: format!(
                "(max by (cluster, member) (probe_success{{{tls_sel}}}) == 0)\nor\n(0 * max by (cluster, member) \
                 (up{{{sel}}}) unless on (cluster, member) probe_success{{{tls_sel}}})"
            ),
            for_: c.for_(600),
            severity: "warning",
            summary: "An etcd member's certificate expiry is not watched: its TLS probe fails or is missing.",
            description: "The TLS probe of member {{ $labels.member }} of cluster {{ $labels.cluster }} has failed, or \
                          has not run, for 10 minutes: etcdCertificateExpiresSoon cannot fire for it. Ask the blackbox \
                          exporter why (/probe?module=etcd_tls&target=...&debug=true).",
            source: "ours: an alert whose input is missing must not stay quiet".into(),
            runbook: "docs/monitoring.md#what-each-alert-means",
        },
        Alert {
            name: "etcdBackupStale",
            // The newest good snapshot of any member, against twice the interval; or node
            // exporters that answer while no member has ever written a good one. A cluster
            // without the `etcd-backup` job (Kubernetes) has neither series and stays quiet.
            expr: format!(
                "(time() - max by (cluster) (etcd_backup_last_success_timestamp_seconds{{{backup_sel}}}))\n> 2 * max by \
                 (cluster) (etcd_backup_interval_seconds{{{backup_sel}}})\nor\n(0 * max by (cluster) (up{{{backup_sel}}}) \
                 unless on (cluster) etcd_backup_last_success_timestamp_seconds{{{backup_sel}}})"
            ),
            for_: c.for_(300),
            severity: "critical",
            summary: "No good etcd snapshot reached the backup host for two intervals.",
            description: "The newest snapshot of cluster {{ $labels.cluster }} that was taken, checked and shipped is \
                          {{ $value | humanizeDuration }} old (0s: none ever was): a disaster now would lose more \
                          than the backups promise. Read `journalctl -u etcd-backup.service -u \
                          etcd-backup-ship.service` on the members.",
            source: "ours: the [backup] interval of the cluster file, twice, as the issue of a missed run".into(),
            runbook: "docs/systemd-hosts.md#backups-off-the-host",
        },
    ]
}

/// The rules file of cluster `cluster`: one group of recording rules and one of alerts, as
/// `promtool check rules` wants it.
pub fn rules_yaml(cluster: &str, c: &Clock) -> Result<String> {
    let sel = format!("job=\"{JOB}\"");
    let tls_sel = format!("job=\"{TLS_JOB}\"");
    let records: Vec<Value> =
        recording_rules(&sel, c).into_iter().map(|(record, expr)| json!({ "record": record, "expr": expr })).collect();
    let alerts: Vec<Value> = alerts(&sel, &tls_sel, c)
        .into_iter()
        .map(|a| {
            json!({
                "alert": a.name,
                "expr": a.expr,
                "for": a.for_,
                "labels": { "severity": a.severity },
                "annotations": {
                    "summary": a.summary,
                    "description": a.description,
                    "source": a.source,
                    "runbook": a.runbook,
                },
            })
        })
        .collect();
    let doc = json!({
        "groups": [
            { "name": format!("etcd-{cluster}.records"), "rules": records },
            { "name": format!("etcd-{cluster}.alerts"), "rules": alerts },
        ]
    });
    let body = serde_yaml_ng::to_string(&doc).context("cannot write the rules as YAML")?;
    let compressed = match c.scale {
        1 => String::new(),
        n => format!("# Time compressed {n} times (for: and windows) for the smoke test: not for production.\n"),
    };
    Ok(format!(
        "# Alerting and recording rules for etcd cluster {cluster}, written by `cargo xtask render` or `k8s`.\n# Generated: \
         edit the generator (xtask/src/render/monitoring.rs), not this file.\n{compressed}{body}"
    ))
}

/// One field of every alert, in file order, without repeats.
fn of_every_alert(field: fn(&Alert) -> &'static str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for a in alerts("", "", &Clock::PRODUCTION) {
        if !out.contains(&field(&a)) {
            out.push(field(&a));
        }
    }
    out
}

/// The names of the alerts, in file order, without repeats.
pub fn alert_names() -> Vec<&'static str> {
    of_every_alert(|a| a.name)
}

/// Every alert's runbook link (`docs/PAGE.md#heading`), in file order, without repeats.
pub fn runbooks() -> Vec<&'static str> {
    of_every_alert(|a| a.runbook)
}

/// Where the blackbox exporter that probes the members' TLS ports listens (its default).
pub const BLACKBOX_ADDRESS: &str = "127.0.0.1:9115";

/// The directory, beside `prometheus.yml`, that holds the scrape client's certificate.
pub fn cert_dir(cluster: &str) -> String {
    format!("etcd-{cluster}")
}

/// The files the scrape client's TLS takes, by their absolute path under `config_dir` (the
/// Prometheus host's configuration directory): Prometheus would resolve a relative name against
/// its configuration's directory, but the blackbox exporter resolves it against its working
/// directory, which is `/` under Debian's unit.
fn tls_files(config_dir: &str, cluster: &str) -> Value {
    let dir = format!("{config_dir}/{}", cert_dir(cluster));
    json!({
        "ca_file": format!("{dir}/ca.crt"),
        "cert_file": format!("{dir}/client.crt"),
        "key_file": format!("{dir}/client.key"),
    })
}

/// Where Prometheus reaches the members: each member's name and host, and the port of its
/// mutual-TLS metrics listener.
pub struct Scrape {
    pub targets: Vec<(String, String)>,
    pub metrics_port: u16,
    /// Node exporter's port on each host, for the backups' metrics (hosts only: a pod has no
    /// backup units).
    pub backup_port: Option<u16>,
}

impl Scrape {
    /// Hosts (bundles, the portable service, static pods): each node's first IP, port 2381.
    pub fn nodes(spec: &ClusterSpec) -> Result<Scrape> {
        Ok(Scrape {
            targets: super::config::node_hosts(spec)?,
            metrics_port: super::config::METRICS_PORT,
            backup_port: Some(NODE_EXPORTER_PORT),
        })
    }

    /// The StatefulSet: each pod by the DNS name its certificates carry (a pod's IP changes and
    /// is in no certificate), its mutual-TLS metrics port; member `i` is pod `<name>-<i>`.
    pub fn statefulset(spec: &ClusterSpec, k: &KubeNames) -> Scrape {
        let targets = (0..spec.nodes.len()).map(|i| (k.pod(i), k.pod_fqdn(i))).collect();
        Scrape { targets, metrics_port: super::config::METRICS_TLS_PORT_POD, backup_port: None }
    }
}

/// `prometheus.yml` for the cluster: its rules, the members' metrics over mutual TLS (the
/// scrape client's certificate) and the TLS probes of their client ports through the blackbox
/// exporter at `blackbox`; every file named by its absolute path under `config_dir`.
pub fn prometheus_yaml(
    cluster: &str,
    config_dir: &str,
    scrape: &Scrape,
    scrape_interval: &str,
    blackbox: &str,
) -> Result<String> {
    let statics = |port: u16| -> Vec<Value> {
        scrape
            .targets
            .iter()
            .map(|(member, host)| {
                json!({ "targets": [format!("{host}:{port}")], "labels": { "cluster": cluster, "member": member } })
            })
            .collect()
    };
    let mut jobs = vec![
        json!({
            "job_name": JOB,
            "scheme": "https",
            "tls_config": tls_files(config_dir, cluster),
            "static_configs": statics(scrape.metrics_port),
        }),
        json!({
            "job_name": TLS_JOB,
            "metrics_path": "/probe",
            "params": { "module": ["etcd_tls"] },
            "static_configs": statics(super::config::CLIENT_PORT),
            "relabel_configs": [
                { "source_labels": ["__address__"], "target_label": "__param_target" },
                { "source_labels": ["__param_target"], "target_label": "instance" },
                { "target_label": "__address__", "replacement": blackbox },
            ],
        }),
    ];
    if let Some(port) = scrape.backup_port {
        // etcd-backup-ship writes its own cluster and member labels: keep them.
        jobs.push(json!({ "job_name": BACKUP_JOB, "honor_labels": true, "static_configs": statics(port) }));
    }
    let doc = json!({
        "global": { "scrape_interval": scrape_interval, "evaluation_interval": scrape_interval },
        "rule_files": [format!("{config_dir}/{RULES_FILE}")],
        "scrape_configs": jobs,
    });
    let body = serde_yaml_ng::to_string(&doc).context("cannot write the scrape configuration as YAML")?;
    Ok(format!(
        "# Prometheus for etcd cluster {cluster}, written by `cargo xtask render` or `k8s` for a Prometheus host\n# whose \
         configuration lives in {config_dir} (the cluster file's monitoring.config_dir): install this\n# directory's files \
         there, or merge them into the configuration you have; files are named by absolute path.\n{body}"
    ))
}

/// The textfile ([`CRL_TEXTFILE`]) of the CRLs member `member` of `cluster` reads, from its
/// directory of the PKI (`node_dir`): their next-update and how many serials they list, so that
/// the alert sees a CRL left to expire and an operator sees which members got a revocation.
pub fn crl_textfile(cluster: &str, member: &str, node_dir: &Path) -> Result<String> {
    use crate::pki::issue::crl::{CRL, PEER_CRL};
    let mut next = String::new();
    let mut listed = String::new();
    for (name, file) in [("client", CRL), ("peer", PEER_CRL)] {
        let path = node_dir.join(file);
        let text = fs::read_to_string(&path).with_context(|| {
            format!("cannot read {}: issue the PKI again with `cargo xtask pki --cluster FILE`", path.display())
        })?;
        let info = crate::pki::issue::crl::read_crl(&text, None)
            .with_context(|| format!("the {name} CRL of {member}: issue the PKI again with `cargo xtask pki`"))?;
        let labels = format!("cluster=\"{cluster}\",member=\"{member}\",crl=\"{name}\"");
        let when = info.next_update.with_context(|| format!("the {name} CRL of {member} has no next-update"))?;
        next.push_str(&format!("etcd_crl_next_update_timestamp_seconds{{{labels}}} {when}\n"));
        listed.push_str(&format!("etcd_crl_revoked_certificates{{{labels}}} {}\n", info.serials.len()));
    }
    Ok(format!(
        "# Written by `cargo xtask render`: what the CRLs in /etc/etcd/pki/ of this member say (they travel\n\
         # together). Read by node exporter's textfile collector.\n\
         # HELP etcd_crl_next_update_timestamp_seconds When the CRL reaches its next-update.\n\
         # TYPE etcd_crl_next_update_timestamp_seconds gauge\n{next}\
         # HELP etcd_crl_revoked_certificates How many serials the CRL lists.\n\
         # TYPE etcd_crl_revoked_certificates gauge\n{listed}"
    ))
}

/// The blackbox exporter's module `etcd_tls`: a TLS handshake with the scrape client's
/// certificate, which yields `probe_ssl_earliest_cert_expiry` of the member's server certificate;
/// the files named by their absolute path under `config_dir`.
pub fn blackbox_yaml(cluster: &str, config_dir: &str) -> Result<String> {
    let doc = json!({
        "modules": {
            "etcd_tls": {
                "prober": "tcp",
                "timeout": "5s",
                "tcp": { "tls": true, "tls_config": tls_files(config_dir, cluster) },
            }
        }
    });
    let body = serde_yaml_ng::to_string(&doc).context("cannot write the blackbox configuration as YAML")?;
    Ok(format!(
        "# Blackbox exporter module for etcd cluster {cluster}, written by `cargo xtask render` or `k8s` for\n# {config_dir}/blackbox.yml \
         (files are named by absolute path: the exporter resolves a relative one against\n# its working directory).\n{body}"
    ))
}

/// Writes `monitoring/` under `out`: the rules always; with the description's `[monitoring]`
/// also the scrape configuration, the blackbox module and the scrape client's certificate
/// (from the PKI at `pki`), laid out as the Prometheus host's configuration directory
/// (`monitoring.config_dir`) holds them and naming each other there.
pub fn write(out: &Path, spec: &ClusterSpec, pki: &Path) -> Result<()> {
    write_for(&out.join(DIR), spec, pki, &Scrape::nodes(spec)?)
}

/// [`write`] into `dir` itself, for members reached as `scrape` says.
pub fn write_for(dir: &Path, spec: &ClusterSpec, pki: &Path, scrape: &Scrape) -> Result<()> {
    write_with(dir, spec, pki, scrape, &Host::production(spec))
}

/// How a Prometheus host is set up for the cluster: where its configuration lives, how often it
/// scrapes and evaluates, where the blackbox exporter listens, and the rules' clock.
pub struct Host<'a> {
    /// The absolute directory the files are installed in (the cluster file's
    /// `monitoring.config_dir`, or the smoke test's copy of that layout).
    pub config_dir: &'a str,
    pub interval: &'a str,
    pub blackbox: &'a str,
    pub clock: Clock,
}

impl<'a> Host<'a> {
    /// Production: the cluster file's configuration directory, 15 s, the exporter's default.
    pub fn production(spec: &'a ClusterSpec) -> Host<'a> {
        let config_dir = spec.monitoring.as_ref().map_or(MonitoringSpec::DEFAULT_CONFIG_DIR, |m| m.config_dir());
        Host { config_dir, interval: "15s", blackbox: BLACKBOX_ADDRESS, clock: Clock::PRODUCTION }
    }
}

/// [`write_for`] for the Prometheus host `host` (the smoke test's compressed time, its own
/// directory and ports).
pub fn write_with(dir: &Path, spec: &ClusterSpec, pki: &Path, scrape: &Scrape, host: &Host) -> Result<()> {
    let put = |name: &str, text: String| write_atomic(&dir.join(name), text.as_bytes(), 0o644);
    put(RULES_FILE, rules_yaml(&spec.name, &host.clock)?)?;
    let Some(m) = &spec.monitoring else { return Ok(()) };
    put("prometheus.yml", prometheus_yaml(&spec.name, host.config_dir, scrape, host.interval, host.blackbox)?)?;
    put("blackbox.yml", blackbox_yaml(&spec.name, host.config_dir)?)?;
    let certs = dir.join(cert_dir(&spec.name));
    let from = crate::pki::layout::PkiLayout::new(pki).client_dir(&m.scrape_client);
    for file in ["ca.crt", "client.crt", "client.key"] {
        let src = from.join(file);
        let bytes = fs::read(&src).with_context(|| {
            format!("cannot read {}: the certificate of monitoring.scrape_client {:?}", src.display(), m.scrape_client)
        })?;
        write_atomic(&certs.join(file), &bytes, if file.ends_with(".key") { 0o600 } else { 0o644 })?;
    }
    Ok(())
}
