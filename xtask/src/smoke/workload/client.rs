//! How the load and its watchers reach etcd: its JSON gateway over HTTPS (`gateway.rs`, the
//! default: ureq only), or gRPC (`grpc.rs`, the `grpc` feature), which a least-privileged
//! identity needs once etcd's auth is on. In: the transport and the identity. Out: one
//! [`Client`] with the same calls either way.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::gateway::{Gateway, Identity};
pub use crate::smoke::verify::history::WatchMessage;

/// The protocol the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// etcd's JSON gateway (`/v3/kv/...`): a certificate's CN is ignored there once auth is on.
    #[default]
    Gateway,
    /// gRPC, as the API server speaks it: the certificate's CN is the etcd user.
    Grpc,
}

/// Whether this build has the gRPC client (`--features grpc`).
pub const GRPC_BUILT: bool = cfg!(feature = "grpc");

/// One identity's client, over either transport.
pub enum Client {
    Gateway(Gateway),
    #[cfg(feature = "grpc")]
    Grpc(Box<super::grpc::Grpc>),
}

impl Client {
    pub fn new(transport: Transport, identity: &Identity, timeout: Duration) -> Result<Client> {
        match transport {
            Transport::Gateway => Ok(Client::Gateway(Gateway::new(identity, timeout)?)),
            #[cfg(feature = "grpc")]
            Transport::Grpc => Ok(Client::Grpc(Box::new(super::grpc::Grpc::new(identity, timeout)?))),
            #[cfg(not(feature = "grpc"))]
            Transport::Grpc => anyhow::bail!(
                "this xtask was built without the gRPC client: build it with `--features grpc` (`cargo xtask smoke` \
                 does so itself when a scenario needs it)"
            ),
        }
    }

    /// A put; the store's revision after it.
    pub fn put(&self, endpoint: &str, key: &str, value: &str) -> Result<Option<i64>> {
        match self {
            Client::Gateway(g) => g.put(endpoint, key, value),
            #[cfg(feature = "grpc")]
            Client::Grpc(g) => g.put(endpoint, key, value),
        }
    }

    /// A linearizable read of one key, with the revision it was read at.
    pub fn get_at(&self, endpoint: &str, key: &str) -> Result<(Option<String>, Option<i64>)> {
        match self {
            Client::Gateway(g) => g.get_at(endpoint, key),
            #[cfg(feature = "grpc")]
            Client::Grpc(g) => g.get_at(endpoint, key),
        }
    }

    /// Every key under `prefix` with its value (linearizable).
    pub fn range_prefix(&self, endpoint: &str, prefix: &str) -> Result<BTreeMap<String, String>> {
        match self {
            Client::Gateway(g) => g.range_prefix(endpoint, prefix),
            #[cfg(feature = "grpc")]
            Client::Grpc(g) => g.range_prefix(endpoint, prefix),
        }
    }

    /// Watches `prefix` on `endpoint` from revision `start` (or from now) for at most `budget`,
    /// handing each message to `on` until it returns false (gRPC only: the gateway's watch is a
    /// stream of JSON, read by `watch.rs` itself).
    pub fn watch(
        &self,
        endpoint: &str,
        prefix: &str,
        start: Option<i64>,
        budget: Duration,
        on: &mut dyn FnMut(WatchMessage) -> bool,
    ) -> Result<()> {
        match self {
            Client::Gateway(_) => {
                let _ = (endpoint, prefix, start, budget, on);
                anyhow::bail!("the gateway's watch is read by watch.rs")
            }
            #[cfg(feature = "grpc")]
            Client::Grpc(g) => g.watch(endpoint, prefix, start, budget, on),
        }
    }
}
