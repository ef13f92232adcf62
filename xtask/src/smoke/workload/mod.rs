//! The workload: what clients do beside the cluster while a scenario runs. In: the members'
//! endpoints and a client identity. Out: what they saw, for the verdict (`verify/`) and the
//! report: the load's history and figures (`load.rs`, through etcd's JSON gateway, `gateway.rs`,
//! or gRPC, `grpc.rs` with the `grpc` feature, one [`client::Client`] either way; what it saw,
//! per phase and epoch, `load_report.rs`),
//! each member's watch stream (`watch.rs`), the second-by-second timeline (`timeline.rs`), and
//! Prometheus with the blackbox exporter scraping and probing the members (`prometheus.rs`), and
//! a backup host the nodes ship snapshots to (`backup_host.rs`: sshd with rrsync).

pub mod backup_host;
pub mod client;
pub mod gateway;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod load;
pub mod load_report;
pub mod prometheus;
pub mod timeline;
pub mod watch;
