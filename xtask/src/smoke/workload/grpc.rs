//! The client side of etcd's gRPC API (the `etcd-client` crate over tonic and rustls), as the
//! Kubernetes API server speaks it: with etcd's auth on, only gRPC acts as a certificate's CN
//! (the JSON gateway ignores it). Built only with the `grpc` feature, which `cargo xtask smoke`
//! turns on when a scenario needs it (see `client.rs`): the first `cargo xtask image` does not
//! compile tonic, tokio and etcd's protocol.
//! In: an endpoint and the identity's files. Out: the same answers as [`super::gateway::Gateway`]
//! (values, revisions, or etcd's reason), and watch messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, TlsOptions, WatchOptions};

use super::gateway::Identity;
use crate::smoke::verify::history::{Event, WatchMessage};

/// A gRPC client of one identity: one connection per endpoint, made on first use; each call
/// bounded by `timeout`. Shared by the load's threads, which call it blocking.
pub struct Grpc {
    runtime: Arc<tokio::runtime::Runtime>,
    options: ConnectOptions,
    clients: Mutex<HashMap<String, Client>>,
    timeout: Duration,
}

/// etcd's answer as one line: the gRPC status's message (etcd's own reason) when there is one.
fn reason(e: etcd_client::Error) -> anyhow::Error {
    match e {
        etcd_client::Error::GRpcStatus(s) => anyhow!("{:?}: {}", s.code(), s.message()),
        other => anyhow!("{other}"),
    }
}

impl Grpc {
    pub fn new(identity: &Identity, timeout: Duration) -> Result<Grpc> {
        // The same checks of the files as the gateway's client, with their messages.
        identity.tls_config()?;
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&identity.ca)?))
            .identity(etcd_client::Identity::from_pem(read(&identity.cert)?, read(&identity.key)?));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(timeout.min(Duration::from_secs(1)))
            .with_timeout(timeout);
        // Each client is used by one thread of the load: a runtime on that thread is enough.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the gRPC client's runtime")?;
        Ok(Grpc { runtime: Arc::new(runtime), options, clients: Mutex::new(HashMap::new()), timeout })
    }

    /// The connection to `endpoint` (a cheap clone of it).
    fn client(&self, endpoint: &str) -> Result<Client> {
        if let Some(c) = self.clients.lock().ok().and_then(|m| m.get(endpoint).cloned()) {
            return Ok(c);
        }
        let options = self.options.clone();
        let client = self
            .runtime
            .block_on(Client::connect([endpoint], Some(options)))
            .map_err(reason)
            .with_context(|| format!("{endpoint}: cannot set up a gRPC connection"))?;
        if let Ok(mut m) = self.clients.lock() {
            m.insert(endpoint.to_string(), client.clone());
        }
        Ok(client)
    }

    fn call<T, F>(&self, endpoint: &str, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client(endpoint)?;
        let timeout = self.timeout;
        self.runtime
            .block_on(async move {
                match tokio::time::timeout(timeout, f(client)).await {
                    Ok(r) => r.map_err(reason),
                    Err(_) => Err(anyhow!("timed out after {timeout:?}")),
                }
            })
            .with_context(|| endpoint.to_string())
    }

    /// A put; returns the store's revision after it.
    pub fn put(&self, endpoint: &str, key: &str, value: &str) -> Result<Option<i64>> {
        let (key, value) = (key.to_string(), value.to_string());
        let resp = self.call(endpoint, |mut c| async move { c.put(key, value, None).await })?;
        Ok(resp.header().map(|h| h.revision()))
    }

    /// A linearizable read of one key, with the store's revision it was read at.
    pub fn get_at(&self, endpoint: &str, key: &str) -> Result<(Option<String>, Option<i64>)> {
        let key = key.to_string();
        let resp = self.call(endpoint, |mut c| async move { c.get(key, None).await })?;
        let value = resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        Ok((value, resp.header().map(|h| h.revision())))
    }

    /// Every key under `prefix` with its value (linearizable).
    pub fn range_prefix(&self, endpoint: &str, prefix: &str) -> Result<BTreeMap<String, String>> {
        let prefix = prefix.to_string();
        let resp =
            self.call(endpoint, |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (String::from_utf8_lossy(kv.key()).into_owned(), String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect())
    }

    /// Watches `prefix` on `endpoint` from `start` (or from now) for at most `budget`, handing
    /// each message to `on`; `on` returns false to stop. Errors opening the stream are returned.
    pub fn watch(
        &self,
        endpoint: &str,
        prefix: &str,
        start: Option<i64>,
        budget: Duration,
        on: &mut dyn FnMut(WatchMessage) -> bool,
    ) -> Result<()> {
        let mut client = self.client(endpoint)?;
        let prefix = prefix.to_string();
        let connect = self.timeout;
        self.runtime
            .block_on(async move {
                // etcd-client keeps the "created" answer, and with it the store's revision the watch
                // began after, to itself: a fresh watch starts after the revision a read just saw.
                let start = match start {
                    Some(rev) => rev,
                    None => {
                        let only = GetOptions::new().with_prefix().with_keys_only().with_limit(1);
                        let read = match tokio::time::timeout(connect, client.get(prefix.clone(), Some(only))).await {
                            Ok(r) => r.map_err(reason)?,
                            Err(_) => {
                                return Err(anyhow!("timed out reading the revision to watch from after {connect:?}"))
                            }
                        };
                        let rev = read.header().map(|h| h.revision()).context("a read without a revision")?;
                        if !on(WatchMessage { created_at: Some(rev), canceled: None, events: Vec::new() }) {
                            return Ok(());
                        }
                        rev + 1
                    }
                };
                let options = WatchOptions::new().with_prefix().with_start_revision(start);
                let (_watcher, mut stream) =
                    match tokio::time::timeout(connect, client.watch(prefix, Some(options))).await {
                        Ok(r) => r.map_err(reason)?,
                        Err(_) => return Err(anyhow!("timed out opening a watch after {connect:?}")),
                    };
                let end = tokio::time::Instant::now() + budget;
                loop {
                    let next = match tokio::time::timeout_at(end, stream.message()).await {
                        Err(_) => return Ok(()),
                        Ok(Err(_)) | Ok(Ok(None)) => return Ok(()),
                        Ok(Ok(Some(m))) => m,
                    };
                    let events = next
                        .events()
                        .iter()
                        .filter_map(|e| e.kv())
                        .map(|kv| Event {
                            revision: kv.mod_revision(),
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: String::from_utf8_lossy(kv.value()).into_owned(),
                        })
                        .collect();
                    let message = WatchMessage {
                        created_at: None,
                        canceled: next.canceled().then(|| (next.compact_revision(), next.cancel_reason().to_string())),
                        events,
                    };
                    if !on(message) {
                        return Ok(());
                    }
                }
            })
            .with_context(|| endpoint.to_string())
    }
}
