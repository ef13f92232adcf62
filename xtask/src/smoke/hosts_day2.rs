//! Day-2 on the systemd machines: certificate renewal under the client load, as each node's
//! INSTALL.md says (run verbatim in its machine, one member at a time): the host form moves the
//! renewed files into place and etcd takes them on new connections; the portable form restarts
//! etcd, because `LoadCredential=` copies the certificates only at start. Zero failed requests.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pki::profiles::Profiles;

use super::hosts::{Form, Hosts, HEALTHY_TIMEOUT};

impl Hosts {
    /// `pki renew` of every leaf, the bundles rendered again, and each machine given its new
    /// certificates by its INSTALL.md's renewal block, one at a time.
    pub(super) fn renew(&mut self) -> Result<()> {
        self.scenario = format!("{}/renew", self.form.as_str());
        if self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).is_err() {
            bail!("the cluster is not healthy before the renewal");
        }
        self.start_load()?;
        let t = Instant::now();
        let r = self.renew_steps();
        let ok = r.is_ok();
        let name = "renew: every leaf reissued, delivered as INSTALL.md says, served on both ports";
        super::record_check(&mut self.checks, &self.scenario, name, t, r);
        self.timings.insert(format!("{}_renew", self.form.as_str()), t.elapsed().as_secs_f64());
        self.finish_load(&[]);
        if !ok {
            self.record_logs();
        }
        Ok(())
    }

    fn renew_steps(&mut self) -> Result<String> {
        self.phase("pki renew");
        let before = self.leaf_serials()?;
        crate::pki::renew(&self.pki.root, &Profiles::load(&Profiles::default_path())?, None)?;
        let after = self.leaf_serials()?;
        if let Some((k, _)) = before.iter().find(|(k, v)| after.get(*k) == Some(v)) {
            bail!("pki renew left {k} unchanged");
        }
        self.render_again()?;
        let marker = match self.form {
            Form::Portable => "systemctl restart etcd.service",
            _ => "etcd-renew",
        };
        let mut notes = Vec::new();
        for i in 0..self.machines.len() {
            self.interrupt.check()?;
            let node = self.spec.nodes[i].name.clone();
            self.phase(&format!("renew {node}"));
            let block = self.block(i, marker)?;
            self.provision(i)?;
            let t = Instant::now();
            self.machines[i].sh_ok(&format!("cd /root/etcd-install && set -ex\n{block}"))?;
            self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).with_context(|| format!("after renewing {node}"))?;
            let healthy = t.elapsed().as_secs_f64();
            self.member_healthy.push((format!("{node} renewed"), healthy));
            for (peer, file) in [(false, "server.crt"), (true, "peer.crt")] {
                let served = self.served_serial(i, peer)?;
                let want = &after[&format!("{node}/{file}")];
                if &served != want {
                    bail!(
                        "{node} serves serial {served} on its {} port, not the renewed {want}",
                        if peer { "peer" } else { "client" }
                    );
                }
            }
            notes.push(format!("{node} {healthy:.1} s"));
        }
        let how = match self.form {
            Form::Portable => "restarted one at a time (LoadCredential copies at start)",
            _ => "files moved into place, no restart",
        };
        Ok(format!(
            "{} leaves reissued; {how}; new serials served on client and peer ports; 3/3 healthy after each: {}",
            after.len(),
            notes.join(", ")
        ))
    }

    /// The serial of each node's server and peer certificate in the run's PKI.
    fn leaf_serials(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for n in &self.spec.nodes {
            for file in ["server.crt", "peer.crt"] {
                let path = self.pki.node_dir(&n.name).join(file);
                let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                out.insert(format!("{}/{file}", n.name), crate::pki::cert::first_cert(&text)?.serial);
            }
        }
        Ok(out)
    }

    /// `cargo xtask render` again over the run's bundles (the PKI is brought up to date, not
    /// reissued).
    fn render_again(&self) -> Result<()> {
        crate::render::render(&crate::render::Render {
            input: crate::render::ClusterArgs {
                cluster: self.cluster_file.clone(),
                pki: Some(self.pki.root.clone()),
                tuning_presets: None,
                arch: Some(self.arch),
                etcd_version: Some(self.version.clone()),
            },
            out: Some(self.render.clone()),
            client: None,
            tls_stage: crate::render::config::TlsStage::Tls,
        })
        .map(|_| ())
        .context("cannot render the bundles again")
    }

    /// The serial of the certificate node `i` serves on its client (or peer) port, over a new
    /// connection made with openssl from inside the namespace.
    fn served_serial(&self, i: usize, peer: bool) -> Result<String> {
        let node = &self.spec.nodes[i].name;
        let (port, dir, ca, cert, key) = if peer {
            (2380, self.pki.node_dir(node), "peer-ca.crt", "peer.crt", "peer.key")
        } else {
            (2379, self.pki.client_dir("etcdctl"), "ca.crt", "client.crt", "client.key")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .netns
                .command("openssl")
                .args(["s_client", "-connect", &format!("{}:{port}", self.machines[i].ip)])
                .arg("-CAfile")
                .arg(dir.join(ca))
                .arg("-cert")
                .arg(dir.join(cert))
                .arg("-key")
                .arg(dir.join(key))
                .stdin(std::process::Stdio::null())
                .output()
                .context("cannot run openssl s_client (apt-get install openssl)")?;
            let text = String::from_utf8_lossy(&out.stdout);
            if let (Some(b), Some(e)) =
                (text.find("-----BEGIN CERTIFICATE-----"), text.find("-----END CERTIFICATE-----"))
            {
                return Ok(crate::pki::cert::first_cert(&text[b..e + "-----END CERTIFICATE-----".len()])?.serial);
            }
            if Instant::now() > deadline {
                bail!(
                    "openssl s_client to {node} port {port} printed no certificate: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
