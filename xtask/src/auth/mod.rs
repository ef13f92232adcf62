//! `cargo xtask auth apply|check`: etcd's users, roles and auth switch made to match the cluster
//! description's `[access]` (`roles.rs`), on a running cluster, through etcdctl (`live.rs`).
//! In: the description, its PKI (the acting root identity's certificate) and the endpoints.
//! Out: the cluster changed (apply) or every difference named (check). docs/least-privilege.md.

pub mod live;
pub mod roles;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::acquire::Acquired;
use crate::definition::Definition;
use crate::pki::{ClusterSpec, PkiLayout};
use crate::util::{target_dir, Arch};
use live::{Etcdctl, Live};
use roles::Access;

/// Give each client identity only what it needs: etcd's users and roles from the cluster
/// description's [access] section, and etcd's authentication turned on.
///
/// `apply` takes a running cluster from "auth off" (or from an earlier apply) to the file:
/// roles and their key prefixes first, then users (without passwords: etcd takes a client's
/// name from its certificate's CN), then what the file no longer gives is revoked and deleted,
/// and auth is enabled last. Run twice, the second run changes nothing. `check` compares the
/// running cluster with the file and names every difference; it exits non-zero if there is one.
///
/// Both act as a client the file makes "root" (--client), with its certificate from the PKI,
/// through etcdctl (gRPC: with auth on, etcd's JSON gateway ignores a certificate's CN).
/// etcdctl is the one `cargo xtask fetch` put in target/etcd/<version>/<arch>/, or --etcdctl.
#[derive(Debug, clap::Args)]
#[command(long_about)]
pub struct AuthCmd {
    #[command(subcommand)]
    sub: AuthSub,
}

#[derive(Debug, clap::Subcommand)]
enum AuthSub {
    /// Make the running cluster's users and roles those of the file, then enable auth
    Apply {
        #[command(flatten)]
        target: Target,
        /// Print the changes without making them
        #[arg(long)]
        dry_run: bool,
    },
    /// Name every difference between the running cluster and the file; non-zero exit if any
    Check {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Cluster description (TOML) with an [access] section, e.g. clusters/tutorial.toml
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// PKI directory made by `cargo xtask pki` [default: target/pki/<cluster name>/]
    #[arg(long, value_name = "DIR")]
    pki: Option<PathBuf>,
    /// Client URLs, comma-separated [default: https://<first address of each node>:2379]
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The identity to act as: a client the file makes "root" [default: etcdctl if it is root,
    /// else the first root client]
    #[arg(long, value_name = "ID")]
    client: Option<String>,
    /// etcdctl to run [default: target/etcd/<etcd.version of images/etcd.toml>/<this arch>/etcdctl]
    #[arg(long, value_name = "PATH")]
    etcdctl: Option<PathBuf>,
}

impl AuthCmd {
    pub fn run(self) -> Result<()> {
        match self.sub {
            AuthSub::Apply { target, dry_run } => {
                let (access, etcdctl) = target.open()?;
                let live = Live::read(&etcdctl)?;
                let steps = live::plan(&access.desired(), &live);
                if steps.is_empty() {
                    println!("auth: the cluster already matches {}: nothing to change", target.cluster.display());
                    return Ok(());
                }
                for s in &steps {
                    if dry_run {
                        println!("would: {}  (etcdctl {})", s.what, s.args.join(" "));
                        continue;
                    }
                    let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
                    etcdctl.run(&args).with_context(|| format!("{}: stopped; nothing after it was done", s.what))?;
                    println!("done: {}", s.what);
                }
                if !dry_run {
                    println!("auth: {} changes made; `cargo xtask auth check` compares again", steps.len());
                }
                Ok(())
            }
            AuthSub::Check { target } => {
                let (access, etcdctl) = target.open()?;
                let steps = live::plan(&access.desired(), &Live::read(&etcdctl)?);
                if steps.is_empty() {
                    println!("auth: the cluster matches {}", target.cluster.display());
                    return Ok(());
                }
                for s in &steps {
                    println!("differs: {}", s.what);
                }
                bail!(
                    "{} difference(s) between the cluster and {}: `cargo xtask auth apply` with the same arguments \
                     makes them go",
                    steps.len(),
                    target.cluster.display()
                )
            }
        }
    }
}

impl Target {
    /// The file's access rules and an etcdctl acting as a root identity of it.
    fn open(&self) -> Result<(Access, Etcdctl)> {
        let spec = ClusterSpec::load(&self.cluster)?;
        let Some(access) = spec.access.clone() else {
            bail!(
                "{}: no [access] section, so every client certificate is root and there is nothing to apply: say what \
                 each client may do (docs/least-privilege.md)",
                self.cluster.display()
            );
        };
        let client = match &self.client {
            Some(c) if access.roots().any(|r| r == c) => c.clone(),
            Some(c) => bail!(
                "--client {c}: {} does not make it \"root\" (roots: {:?}); acting as anyone else could lock the cluster \
                 out of its own management",
                self.cluster.display(),
                access.roots().collect::<Vec<_>>()
            ),
            None => access
                .roots()
                .find(|r| *r == "etcdctl")
                .or_else(|| access.roots().next())
                .context("no root client")?
                .to_string(),
        };
        let pki = self.pki.clone().map(PkiLayout::new).unwrap_or_else(|| PkiLayout::default_for(&spec));
        let identity = pki.client_dir(&client);
        for f in ["ca.crt", "client.crt", "client.key"] {
            if !identity.join(f).is_file() {
                bail!(
                    "{} has no {f}: issue the PKI first (`cargo xtask pki --cluster {}`), or pass --pki",
                    identity.display(),
                    self.cluster.display()
                );
            }
        }
        let endpoints = if self.endpoints.is_empty() {
            spec.nodes
                .iter()
                .map(|n| {
                    let host =
                        n.ips.first().map(|ip| ip.to_string()).or_else(|| n.dns.first().cloned()).unwrap_or_default();
                    format!("https://{host}:2379")
                })
                .collect()
        } else {
            self.endpoints.clone()
        };
        let base = match &self.etcdctl {
            Some(p) => Command::new(p),
            None => {
                let def = Definition::load_default()?;
                let arch = Arch::host().context("this machine's architecture has no etcd build: pass --etcdctl")?;
                let dir = target_dir().join("etcd").join(&def.etcd.version).join(arch.to_string());
                let acquired = Acquired::open(&dir).with_context(|| {
                    format!(
                        "no verified etcdctl {} in {}: run `cargo xtask fetch` first, or pass --etcdctl PATH",
                        def.etcd.version,
                        dir.display()
                    )
                })?;
                acquired.command("etcdctl")?
            }
        };
        Ok((access, Etcdctl::new(&base, &endpoints, &identity)))
    }
}
