//! `cargo xtask`: flat dispatch to one command per stage.

fn main() {
    xtask::main();
}
