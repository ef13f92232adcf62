//! `cargo xtask ci`: installs what the suite needs, then runs every test. (Being written.)

use anyhow::{bail, Result};

/// Install the test dependencies and run the whole test suite (what `.ci/run` runs).
#[derive(Debug, clap::Args)]
pub struct Ci {}

impl Ci {
    pub fn run(self) -> Result<()> {
        bail!("not implemented yet")
    }
}
