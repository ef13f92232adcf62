//! The Prometheus rules `render` writes: valid for Debian's promtool, every alert proven by
//! `promtool test rules` on hand-made series (xtask/tests/monitoring/etcd-rules.test.yml), and
//! every runbook an alert points to a heading of the page of docs/ it names.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{ok, require, root, xtask_ok};
use xtask::docs::anchor as slug;

/// `clusters/tutorial.toml` with `config_dir = DIR` under its `[monitoring]`, written as `name`
/// in `tmp`; its path.
fn tutorial_with_config_dir(tmp: &Path, name: &str, dir: &str) -> String {
    let tutorial = fs::read_to_string(root().join("clusters/tutorial.toml")).unwrap();
    let m = "scrape_client = \"prometheus\"";
    assert!(tutorial.contains(m), "clusters/tutorial.toml: no {m}");
    let file = tmp.join(name);
    fs::write(&file, tutorial.replace(m, &format!("{m}\nconfig_dir = {dir:?}"))).unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn rendered_rules_pass_promtool_and_every_alert_is_tested() {
    require("promtool");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("render");
    let pki = tmp.path().join("pki");
    let k8s = tmp.path().join("k8s");
    // The tutorial cluster, with its Prometheus host's configuration directory where this test
    // renders it, so that promtool finds every file the configuration names (the docs'
    // recipe test installs the default layout in /etc/prometheus).
    let at = |name: &str, dir: &Path| tutorial_with_config_dir(tmp.path(), name, dir.to_str().unwrap());
    let tutorial_here = at("tutorial.toml", &out.join("monitoring"));
    let tutorial_sts = at("tutorial-sts.toml", &k8s.join("statefulset/monitoring"));
    xtask_ok(&["render", "--cluster", &tutorial_here, "--pki", pki.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let rules = out.join("monitoring/etcd-rules.yml");
    let text = fs::read_to_string(&rules).unwrap();

    let checked = ok(Command::new("promtool").arg("check").arg("rules").arg(&rules));
    let names = xtask::render::monitoring::alert_names();
    let alerts = text.matches("- alert: ").count();
    let records = text.matches("  record: ").count();
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alerts + records)), "{checked}");
    println!("promtool check rules: {} alerts ({} names), {records} recording rules", alerts, names.len());

    // The scrape configuration (clusters/tutorial.toml has [monitoring]) is valid for promtool,
    // with the certificate it names beside it, and each member serves what it scrapes.
    let monitoring = out.join("monitoring");
    let config = ok(Command::new("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&monitoring));
    assert!(config.contains("SUCCESS: prometheus.yml is valid"), "{config}");
    // So is the one `k8s` writes for the StatefulSet (pods by DNS name, their TLS metrics port).
    xtask_ok(&["k8s", "--cluster", &tutorial_sts, "--pki", pki.to_str().unwrap(), "--out", k8s.to_str().unwrap()]);
    let sts = k8s.join("statefulset/monitoring");
    let config = ok(Command::new("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&sts));
    assert!(
        config.contains("SUCCESS: prometheus.yml is valid") && config.contains("SUCCESS: 1 rule files found"),
        "{config}"
    );
    for file in ["ca.crt", "client.crt", "client.key"] {
        let meta = fs::metadata(monitoring.join("etcd-tutorial").join(file)).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        assert_eq!(mode, if file == "client.key" { 0o600 } else { 0o644 }, "{file}");
    }
    let subject = ok(Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(monitoring.join("etcd-tutorial/client.crt")));
    assert!(subject.contains("CN = prometheus") || subject.contains("CN=prometheus"), "{subject}");
    let scrape = fs::read_to_string(monitoring.join("prometheus.yml")).unwrap();
    let conf = fs::read_to_string(out.join("master1/etc/etcd/etcd.conf")).unwrap();
    assert!(conf.contains("ETCD_LISTEN_METRICS_URLS=http://127.0.0.1:2381,https://10.0.1.204:2381"), "{conf}");
    assert!(scrape.contains("- 10.0.1.204:2381") && scrape.contains("- 10.0.1.204:2379"), "{scrape}");

    let tests = root().join("xtask/tests/monitoring/etcd-rules.test.yml");
    let test_text = fs::read_to_string(&tests).unwrap();
    let dir = tmp.path().join("promtool");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(&rules, dir.join("etcd-rules.yml")).unwrap();
    fs::copy(&tests, dir.join("etcd-rules.test.yml")).unwrap();
    let tested = ok(Command::new("promtool").args(["test", "rules", "etcd-rules.test.yml"]).current_dir(&dir));
    assert!(tested.contains("SUCCESS"), "{tested}");
    let cases = test_text.matches("alertname: ").count();
    println!("promtool test rules: {cases} alert checks, SUCCESS");

    // Each alert is seen firing in a test, and seen quiet.
    for name in &names {
        assert!(
            test_text.contains(&format!("alertname: {name}\n        exp_alerts:")),
            "no test of etcd-rules.test.yml expects {name} to fire: add one"
        );
        assert!(
            test_text.contains(&format!("alertname: {name}}}")),
            "no test of etcd-rules.test.yml expects {name} to stay quiet: add one"
        );
    }

    // Every runbook is a heading of the page it names (xtask/tests/docs.rs checks every link
    // this way too), and "What each alert means" explains every alert.
    for line in text.lines().filter_map(|l| l.trim().strip_prefix("runbook: ")) {
        let (page, anchor) = line.split_once('#').unwrap_or_else(|| panic!("runbook {line} has no #heading"));
        let headings: Vec<String> = common::doc(page)
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|h| slug(h.trim_start_matches('#')))
            .collect();
        assert!(headings.iter().any(|a| a == anchor), "runbook {line} is no heading of {page}");
    }
    let page = common::doc("docs/monitoring.md");
    let section = page.split("## What each alert means").nth(1).expect("docs/monitoring.md: ## What each alert means");
    let section = section.split("\n## ").next().unwrap();
    for name in &names {
        assert!(section.contains(&format!("`{name}`")), "\"What each alert means\" does not explain {name}");
    }
}

/// Every file name a rendered monitoring configuration gives (`rule_files`, `*_file`) is
/// absolute: the blackbox exporter resolves a relative one against its working directory.
fn named_files(yaml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_rule_files = false;
    for line in yaml.lines() {
        let t = line.trim();
        if let Some((key, value)) = t.split_once(": ") {
            if key.ends_with("_file") || key.ends_with("_files") {
                names.push(value.trim().to_string());
            }
        }
        if t == "rule_files:" {
            in_rule_files = true;
        } else if in_rule_files && t.starts_with("- ") {
            names.push(t[2..].trim().to_string());
        } else if !line.starts_with(' ') {
            in_rule_files = false;
        }
    }
    names
}

#[test]
fn rendered_monitoring_files_name_their_files_by_absolute_path() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    let out = tmp.path().join("render");
    let k8s = tmp.path().join("k8s");
    let p = |d: &std::path::Path| d.to_str().unwrap().to_string();
    xtask_ok(&["render", "--cluster", "clusters/tutorial.toml", "--pki", &p(&pki), "--out", &p(&out)]);
    xtask_ok(&["k8s", "--cluster", "clusters/tutorial.toml", "--pki", &p(&pki), "--out", &p(&k8s)]);
    // And a Prometheus host whose configuration lives elsewhere (`config_dir`).
    let elsewhere = tutorial_with_config_dir(tmp.path(), "elsewhere.toml", "/srv/prometheus/");
    let out2 = tmp.path().join("render2");
    xtask_ok(&["render", "--cluster", &elsewhere, "--pki", &p(&pki), "--out", &p(&out2)]);
    for (dir, config_dir) in [
        (out.join("monitoring"), "/etc/prometheus"),
        (k8s.join("monitoring"), "/etc/prometheus"),
        (k8s.join("statefulset/monitoring"), "/etc/prometheus"),
        (out2.join("monitoring"), "/srv/prometheus"),
    ] {
        for file in ["prometheus.yml", "blackbox.yml"] {
            let yaml = fs::read_to_string(dir.join(file)).unwrap();
            let names = named_files(&yaml);
            assert!(names.len() >= 3, "{}: expected file names, found {names:?}", dir.join(file).display());
            for name in &names {
                assert!(
                    name.starts_with(&format!("{config_dir}/")),
                    "{}: {name} is not under {config_dir}/, where the Prometheus host keeps it",
                    dir.join(file).display()
                );
                // ... and the file it names is the one beside it in the rendered directory.
                let rel = name.strip_prefix(&format!("{config_dir}/")).unwrap();
                assert!(dir.join(rel).is_file(), "{}: {name} names {rel}, which render did not write", dir.display());
            }
        }
    }
    // A relative configuration directory is refused, naming the field and the fix.
    let relative = tutorial_with_config_dir(tmp.path(), "relative.toml", "prometheus");
    let err = common::xtask_fails(&["render", "--cluster", &relative, "--pki", &p(&pki), "--out", &p(&out2)]);
    assert!(err.contains("monitoring.config_dir") && err.contains("is not an absolute path"), "{err}");
}

/// A Prometheus host and three etcd 3.4.9 members at the tutorial's addresses, each in a network
/// namespace of the test's own, joined by a bridge in the Prometheus host's; removed on drop.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<std::process::Child>,
}

impl Lab {
    fn ns_path(name: &str) -> String {
        format!("/run/netns/{name}")
    }

    fn ip(args: &[&str]) {
        ok(Command::new("ip").args(args));
    }

    fn netns(&mut self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.tag);
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        Lab::ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        Lab::ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Spawns `cmd` in a process group of its own, killed with the lab.
    fn spawn(&mut self, cmd: &mut Command, log: &std::path::Path) {
        let f = fs::File::create(log).unwrap();
        let child = std::os::unix::process::CommandExt::process_group(
            cmd.stdin(std::process::Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f),
            0,
        )
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.children.push(child);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            // The whole group: runuser and the daemon under it.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).output();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}

/// `KEY=` of a systemd unit file's `[Service]` section (the last one wins), without the key.
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).next_back().map(str::to_string)
}

/// The command line that runs `unit` as systemd would from Debian's unit file: its user, its
/// environment file, its ExecStart, in its working directory (none given: `/`).
fn as_debians_unit_runs(unit: &str) -> (String, String) {
    let path = format!("/lib/systemd/system/{unit}.service");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    assert!(
        unit_value(&text, "WorkingDirectory").is_none(),
        "{path} now sets WorkingDirectory: this test runs the daemon in `/`, as the unit did when it was written"
    );
    let user = unit_value(&text, "User").unwrap_or_else(|| panic!("{path}: no User="));
    let env = unit_value(&text, "EnvironmentFile").unwrap_or_else(|| panic!("{path}: no EnvironmentFile="));
    let exec = unit_value(&text, "ExecStart").unwrap_or_else(|| panic!("{path}: no ExecStart="));
    let env = env.trim_start_matches('-');
    // systemd splits an unquoted $ARGS into words, as sh does.
    (user, format!("cd / && set -a && . {env} && set +a && exec {exec}"))
}

/// docs/monitoring.md: the Prometheus-host recipe, verbatim, in a mount namespace of the test's
/// own (a fresh `/etc/prometheus` and `/var/lib/prometheus`, nothing of the host's changed), then
/// Debian's Prometheus and blackbox exporter started as their units start them (their user,
/// environment file and ExecStart, working directory `/`), against three etcd v3.4.9 members at
/// the tutorial's addresses with the certificates and `etcd.conf` `render` wrote. Prometheus
/// must scrape all three over mutual TLS and see each member's certificate expiry through the
/// probe: the series `etcdCertificateExpiresSoon` reads.
#[test]
fn readme_prometheus_host_recipe_works_verbatim_under_debians_units() {
    for tool in
        ["ip", "nsenter", "unshare", "runuser", "curl", "prometheus", "prometheus-blackbox-exporter", "promtool"]
    {
        require(tool);
    }
    let arch = common::host_arch();
    common::build_etcd_349(&[arch]);
    let etcd = common::etcd_349_dir(arch).join("etcd");
    let readme = common::doc("docs/monitoring.md");
    let marker = "<!-- recipe: prometheus-host -->\n```sh\n";
    let start =
        readme.find(marker).expect("docs/monitoring.md has no <!-- recipe: prometheus-host --> block") + marker.len();
    let recipe = &readme[start..start + readme[start..].find("```").expect("the recipe's closing fence")];

    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab { tag: format!("xmon{}", std::process::id()), namespaces: vec![], children: vec![] };
    // The Prometheus host's namespace holds the bridge; each member's joins it with a veth pair.
    let host = lab.netns("p");
    Lab::ip(&["-n", &host, "link", "add", "br0", "type", "bridge"]);
    Lab::ip(&["-n", &host, "addr", "add", "10.0.1.10/24", "dev", "br0"]);
    Lab::ip(&["-n", &host, "link", "set", "br0", "up"]);

    // The recipe first: it renders the tutorial cluster (certificates, etcd.conf) the members use.
    let recipe_file = tmp.path().join("recipe.sh");
    fs::write(&recipe_file, recipe).unwrap();
    let seed = tmp.path().join("etc-prometheus");
    fs::create_dir_all(&seed).unwrap();
    let (bb_user, blackbox) = as_debians_unit_runs("prometheus-blackbox-exporter");
    let (prom_user, prometheus) = as_debians_unit_runs("prometheus");
    let driver = format!(
        "set -euo pipefail\n\
         cp -a /etc/prometheus/. {seed}/\n\
         mount -t tmpfs -o mode=0755 tmpfs /etc/prometheus\n\
         cp -a {seed}/. /etc/prometheus/\n\
         mkdir -p /var/lib/prometheus\n\
         mount -t tmpfs -o mode=0755 tmpfs /var/lib/prometheus\n\
         chown prometheus:prometheus /var/lib/prometheus\n\
         APT_CONFIG={apt} bash -euo pipefail {recipe}\n\
         echo RECIPE-DONE\n\
         while [ ! -e {go} ]; do sleep 0.2; done\n\
         runuser -u {bb_user} -- sh -c '{blackbox}' > {tmpd}/blackbox.log 2>&1 &\n\
         runuser -u {prom_user} -- sh -c '{prometheus}' > {tmpd}/prometheus.log 2>&1 &\n\
         wait\n",
        seed = seed.display(),
        recipe = recipe_file.display(),
        go = tmp.path().join("go").display(),
        apt = common::apt_config_waiting_for_the_lock(tmp.path()).display(),
        tmpd = tmp.path().display(),
    );
    let driver_file = tmp.path().join("driver.sh");
    fs::write(&driver_file, &driver).unwrap();
    let log = tmp.path().join("driver.log");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", Lab::ns_path(&host)))
        .args(["--", "unshare", "--mount", "--propagation", "private", "bash"])
        .arg(&driver_file)
        .current_dir(root());
    xtask::util::as_from_a_shell(&mut cmd);
    lab.spawn(&mut cmd, &log);
    let t = std::time::Instant::now();
    while !fs::read_to_string(&log).unwrap_or_default().contains("RECIPE-DONE") {
        let exited = lab.children[0].try_wait().unwrap();
        assert!(
            exited.is_none() && t.elapsed().as_secs() < 300,
            "the prometheus-host recipe did not finish ({exited:?}):\n{recipe}\n----- output -----\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("monitoring: recipe prometheus-host ran in {:.1} s", t.elapsed().as_secs_f64());

    // The members: the rendered etcd.conf, its /etc/etcd and /var/lib/etcd moved to the test's
    // directories (the members are not under test here, only their certificates and addresses).
    let render = root().join("target/render/tutorial");
    for (i, (node, ip)) in
        [("master1", "10.0.1.204"), ("master2", "10.0.1.67"), ("master3", "10.0.1.236")].iter().enumerate()
    {
        let ns = lab.netns(&format!("m{}", i + 1));
        let veth = format!("v{}", i + 1);
        Lab::ip(&["-n", &host, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        Lab::ip(&["-n", &host, "link", "set", &veth, "master", "br0", "up"]);
        Lab::ip(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        Lab::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        let data = tmp.path().join(node).join("data");
        fs::create_dir_all(&data).unwrap();
        fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let etc = render.join(node).join("etc/etcd");
        let conf = fs::read_to_string(etc.join("etcd.conf")).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", Lab::ns_path(&ns))).arg("--").arg(&etcd).env_clear();
        for line in conf.lines().filter(|l| !l.starts_with('#') && l.contains('=')) {
            let (k, v) = line.split_once('=').unwrap();
            let v = v.replace("/etc/etcd", etc.to_str().unwrap()).replace("/var/lib/etcd", data.to_str().unwrap());
            cmd.env(k, v);
        }
        lab.spawn(&mut cmd, &tmp.path().join(format!("{node}.log")));
    }

    // Debian's daemons, as their units run them.
    fs::write(tmp.path().join("go"), "").unwrap();
    let started = std::time::Instant::now();
    let query = |promql: &str| -> Vec<(String, f64)> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", Lab::ns_path(&host)))
            .args(["--", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9090/api/v1/query", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let member = s["metric"]["member"].as_str().unwrap_or_default().to_string();
                        (member, s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let expiry = loop {
        let expiry = query("probe_ssl_earliest_cert_expiry{job=\"etcd-tls\"}");
        let probes = query("probe_success{job=\"etcd-tls\"}");
        let up = query("up{job=\"etcd\"}");
        if expiry.len() == 3
            && probes.iter().filter(|(_, v)| *v == 1.0).count() == 3
            && up.iter().filter(|(_, v)| *v == 1.0).count() == 3
        {
            break expiry;
        }
        let last = format!("expiry {expiry:?}, probes {probes:?}, members up {up:?}");
        if started.elapsed().as_secs() > 90 {
            let probe = Command::new("nsenter")
                .arg(format!("--net={}", Lab::ns_path(&host)))
                .args(["--", "curl", "-sS", "--max-time", "10"])
                .arg("http://127.0.0.1:9115/probe?module=etcd_tls&target=10.0.1.204:2379&debug=true")
                .output()
                .unwrap();
            panic!(
                "within 90 s of starting Debian's Prometheus and blackbox exporter as their units do, not every member \
                 was scraped and probed: {last}\n----- the exporter's debug output for master1 -----\n{}\n----- \
                 blackbox log -----\n{}\n----- prometheus log (tail) -----\n{}",
                String::from_utf8_lossy(&probe.stdout),
                fs::read_to_string(tmp.path().join("blackbox.log")).unwrap_or_default(),
                fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    // The date the probe saw is the member's own server certificate's.
    for (member, seen) in &expiry {
        let cert = render.join(member).join("etc/etcd/pki/server.crt");
        let end =
            ok(Command::new("openssl").args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"]).arg(&cert));
        let end = end.trim().trim_start_matches("notAfter=");
        let epoch = ok(Command::new("date").args(["-u", "-d", end, "+%s"]));
        let epoch: f64 = epoch.trim().parse().unwrap();
        assert_eq!(*seen, epoch, "{member}: the probe saw expiry {seen}, its server certificate says {end}");
    }
    println!(
        "prometheus-host recipe under Debian's units (working directory /): 3/3 members scraped over mutual TLS, 3/3 \
         TLS probes succeeded; first expiry samples for all three {:.1} s after the daemons started",
        started.elapsed().as_secs_f64()
    );
}
