//! PKI stage. (Being written.)

use anyhow::{bail, Result};

/// Issue or inspect the certificates of a cluster.
#[derive(Debug, clap::Args)]
pub struct PkiCmd {}

impl PkiCmd {
    pub fn run(self) -> Result<()> {
        bail!("not implemented yet")
    }
}
