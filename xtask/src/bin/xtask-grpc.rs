//! `xtask-grpc`: the same program built with the `grpc` feature (the load over gRPC that
//! `smoke --scenario auth` needs); `cargo xtask smoke` builds and runs it when asked for that.

fn main() {
    xtask::main();
}
