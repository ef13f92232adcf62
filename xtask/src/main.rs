//! `cargo xtask`: flat dispatch to one command per stage.

use clap::Parser;

fn main() {
    let cli = xtask::Cli::parse();
    if let Err(err) = cli.run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
