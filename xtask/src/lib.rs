//! The engine behind `cargo xtask`. Each stage is one module with one entry point:
//! definitions and verified inputs in, artifacts out. See ARCHITECTURE.md.

pub mod acquire;
pub mod advisories;
pub mod auth;
pub mod build_etcd;
pub mod ci;
pub mod definition;
pub mod docs;
pub mod files;
pub mod image;
pub mod k8s;
pub mod pki;
pub mod portable;
pub mod release;
pub mod render;
pub mod smoke;
pub mod tls_check;
pub mod upgrade;
pub mod util;
pub mod version;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

/// Build, verify and prove hardened etcd artifacts.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    Fetch(acquire::Fetch),
    BuildEtcd(build_etcd::BuildEtcd),
    Pki(pki::PkiCmd),
    Auth(auth::AuthCmd),
    Image(image::ImageCmd),
    Render(render::Render),
    K8s(k8s::K8s),
    Portable(portable::Portable),
    Smoke(smoke::Smoke),
    TlsCheck(tls_check::TlsCheck),
    Release(release::Release),
    Publish(release::publish::Publish),
    Keygen(release::sign::Keygen),
    Ci(ci::Ci),
    Docs(docs::Docs),
    /// Hold packets of a netfilter queue (the drills' network delay; not for direct use).
    #[command(hide = true)]
    DelayPackets(smoke::netdelay::DelayPackets),
}

/// The program: parses the command line, runs the command, exits 1 with the error's chain.
pub fn main() {
    let cli = Cli::parse();
    if let Err(err) = cli.run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.cmd {
            Cmd::Fetch(cmd) => cmd.run(),
            Cmd::BuildEtcd(cmd) => cmd.run(),
            Cmd::Pki(cmd) => cmd.run(),
            Cmd::Auth(cmd) => cmd.run(),
            Cmd::Image(cmd) => cmd.run(),
            Cmd::Render(cmd) => cmd.run(),
            Cmd::K8s(cmd) => cmd.run(),
            Cmd::Portable(cmd) => cmd.run(),
            Cmd::Smoke(cmd) => cmd.run(),
            Cmd::TlsCheck(cmd) => cmd.run(),
            Cmd::Release(cmd) => cmd.run(),
            Cmd::Publish(cmd) => cmd.run(),
            Cmd::Keygen(cmd) => cmd.run(),
            Cmd::Ci(cmd) => cmd.run(),
            Cmd::Docs(cmd) => cmd.run(Cli::command()),
            Cmd::DelayPackets(cmd) => cmd.run(),
        }
    }
}
