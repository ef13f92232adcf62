//! OCI image stage. (Being written.)

use anyhow::{bail, Result};

/// Bake the OCI image.
#[derive(Debug, clap::Args)]
pub struct ImageCmd {}

impl ImageCmd {
    pub fn run(self) -> Result<()> {
        bail!("not implemented yet")
    }
}
