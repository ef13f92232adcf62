//! Node configuration and per-node host bundles.
//! In: a cluster description and its PKI. Out: what each node runs etcd with.

pub mod config;
