//! Build etcd from source with Go. (Being written.)

use anyhow::{bail, Result};

/// Build etcd from a git tree with Go.
#[derive(Debug, clap::Args)]
pub struct BuildEtcd {}

impl BuildEtcd {
    pub fn run(self) -> Result<()> {
        bail!("not implemented yet")
    }
}
