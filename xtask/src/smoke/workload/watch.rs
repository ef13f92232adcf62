//! One watcher per member, beside the client load: each follows the load's keys through etcd's
//! JSON gateway (`/v3/watch`, a stream of JSON messages) on its own member, and resumes from the
//! revision after its last event whenever the stream ends: a member stopped, cut off or
//! restarted, and also every [`CONNECTION`] on purpose, so that resuming is exercised all the
//! time. In: an endpoint and the client identity. Out: a [`WatchLog`] per member and epoch of
//! the load, which `verify/watch.rs` holds to etcd's watch guarantees. When the load starts a
//! new epoch, each watcher starts over on its prefix from the then current revision (after a
//! restore the revision went back: a watcher must re-list, not resume).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::client::{Client, Transport};
use super::gateway::{decode, int64 as int, prefix_end, Identity};
use crate::smoke::verify::history::{Event, WatchLog, WatchMessage};

/// How long one watch stream lives before the watcher resumes on a new one (also the longest a
/// watcher takes to notice the load stopped).
const CONNECTION: Duration = Duration::from_secs(2);

/// Runs until `stop`: watches the current epoch's prefix (`epoch`: its index and prefix) on
/// `endpoints[member]` (both re-read for every stream, as the load switches endpoints and
/// epochs), appending to the epoch's entry of `logs`; over `transport`.
pub(crate) fn watcher(
    member: usize,
    identity: &Identity,
    transport: Transport,
    epoch: &Mutex<(usize, String)>,
    endpoints: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    logs: &Mutex<Vec<WatchLog>>,
) {
    // The gRPC client, made again when the identity's files change (the gateway's stream makes
    // its own connection every time).
    let mut grpc: Option<(Vec<Option<std::time::SystemTime>>, Client)> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(endpoint) = endpoints.lock().ok().and_then(|e| e.get(member).cloned()) else { return };
        let Some((index, prefix)) = epoch.lock().ok().map(|e| e.clone()) else { return };
        let resume = {
            let Ok(mut l) = logs.lock() else { return };
            while l.len() <= index {
                l.push(WatchLog { member, ..Default::default() });
            }
            l[index].last()
        };
        let start = resume.map(|rev| rev + 1);
        let mut canceled = false;
        let mut on = |m: WatchMessage| -> bool {
            let Ok(mut all) = logs.lock() else { return false };
            let Some(l) = all.get_mut(index) else { return false };
            if m.created_at.is_some() && l.base.is_none() {
                l.base = m.created_at;
            }
            if let Some((compacted, reason)) = m.canceled {
                l.compacted = Some(compacted);
                l.last_error = Some(reason);
                canceled = true;
                return false;
            }
            l.events.extend(m.events);
            l.event_count = l.events.len();
            true
        };
        let result = match transport {
            Transport::Gateway => gateway_watch(identity, &endpoint, &prefix, start, &mut on),
            Transport::Grpc => {
                let stamp = identity.stamp();
                if grpc.as_ref().is_none_or(|(s, _)| *s != stamp) {
                    grpc = Client::new(Transport::Grpc, identity, Duration::from_secs(2)).ok().map(|c| (stamp, c));
                }
                match &grpc {
                    Some((_, c)) => {
                        c.watch(&endpoint, &prefix, start, CONNECTION, &mut on).map_err(|e| format!("{e:#}"))
                    }
                    None => Err("the identity cannot make a gRPC client (files mid-rewrite?)".into()),
                }
            }
        };
        if canceled {
            return;
        }
        match result {
            Ok(()) => {
                if let Some(l) = logs.lock().ok().as_mut().and_then(|l| l.get_mut(index)) {
                    l.streams += 1;
                }
            }
            Err(e) => {
                if let Some(l) = logs.lock().ok().as_mut().and_then(|l| l.get_mut(index)) {
                    l.failed_attempts += 1;
                    l.last_error = Some(e);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// One gateway watch stream of `prefix` from `start`, for [`CONNECTION`], as messages to `on`.
fn gateway_watch(
    identity: &Identity,
    endpoint: &str,
    prefix: &str,
    start: Option<i64>,
    on: &mut dyn FnMut(WatchMessage) -> bool,
) -> Result<(), String> {
    let end = prefix_end(prefix);
    let mut create = serde_json::json!({"key": B64.encode(prefix), "range_end": B64.encode(&end)});
    if let Some(rev) = start {
        create["start_revision"] = serde_json::json!(rev.to_string());
    }
    let reader = stream(identity, endpoint, serde_json::json!({ "create_request": create }))?;
    for message in serde_json::Deserializer::from_reader(reader).into_iter::<serde_json::Value>() {
        // The stream's time budget ends it with an error: resume on a new one.
        let Ok(message) = message else { break };
        let result = &message["result"];
        let events = result["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|ev| {
                let kv = &ev["kv"];
                Some(Event {
                    revision: int(&kv["mod_revision"])?,
                    key: text(&kv["key"])?,
                    value: text(&kv["value"]).unwrap_or_default(),
                })
            })
            .collect();
        let m = WatchMessage {
            created_at: (result["created"] == true).then(|| int(&result["header"]["revision"])).flatten(),
            canceled: (result["canceled"] == true).then(|| {
                (
                    int(&result["compact_revision"]).unwrap_or(0),
                    result["cancel_reason"].as_str().unwrap_or_default().to_string(),
                )
            }),
            events,
        };
        if !on(m) {
            break;
        }
    }
    Ok(())
}

/// Opens a watch stream with its time budget; the reader yields the gateway's JSON messages.
fn stream(identity: &Identity, endpoint: &str, body: serde_json::Value) -> Result<impl std::io::Read, String> {
    let tls = identity.tls_config().map_err(|e| format!("{e:#}"))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(1)))
        .timeout_recv_response(Some(CONNECTION))
        .timeout_recv_body(Some(CONNECTION))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{endpoint}/v3/watch");
    let resp =
        agent.post(&url).content_type("application/json").send(body.to_string()).map_err(|e| format!("{url}: {e}"))?;
    if resp.status().as_u16() != 200 {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    Ok(resp.into_body().into_reader())
}

fn text(v: &serde_json::Value) -> Option<String> {
    v.as_str()?;
    decode(Some(v)).ok()
}
