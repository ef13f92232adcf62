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

use super::gateway::{decode, int64 as int, prefix_end, Identity};
use crate::smoke::verify::history::{Event, WatchLog};

/// How long one watch stream lives before the watcher resumes on a new one (also the longest a
/// watcher takes to notice the load stopped).
const CONNECTION: Duration = Duration::from_secs(2);

/// Runs until `stop`: watches the current epoch's prefix (`epoch`: its index and prefix) on
/// `endpoints[member]` (both re-read for every stream, as the load switches endpoints and
/// epochs), appending to the epoch's entry of `logs`.
pub(crate) fn watcher(
    member: usize,
    identity: &Identity,
    epoch: &Mutex<(usize, String)>,
    endpoints: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    logs: &Mutex<Vec<WatchLog>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let Some(endpoint) = endpoints.lock().ok().and_then(|e| e.get(member).cloned()) else { return };
        let Some((index, prefix)) = epoch.lock().ok().map(|e| e.clone()) else { return };
        let end = prefix_end(&prefix);
        let resume = {
            let Ok(mut l) = logs.lock() else { return };
            while l.len() <= index {
                l.push(WatchLog { member, ..Default::default() });
            }
            l[index].last()
        };
        let mut create = serde_json::json!({"key": B64.encode(prefix), "range_end": B64.encode(&end)});
        if let Some(rev) = resume {
            create["start_revision"] = serde_json::json!((rev + 1).to_string());
        }
        let opened = stream(identity, &endpoint, serde_json::json!({ "create_request": create }));
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                if let Some(l) = logs.lock().ok().as_mut().and_then(|l| l.get_mut(index)) {
                    l.failed_attempts += 1;
                    l.last_error = Some(e);
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if let Some(l) = logs.lock().ok().as_mut().and_then(|l| l.get_mut(index)) {
            l.streams += 1;
        }
        for message in serde_json::Deserializer::from_reader(reader).into_iter::<serde_json::Value>() {
            // The stream's time budget ends it with an error: resume on a new one.
            let Ok(message) = message else { break };
            let result = &message["result"];
            let Ok(mut all) = logs.lock() else { return };
            let Some(l) = all.get_mut(index) else { return };
            if result["created"] == true && l.base.is_none() {
                l.base = int(&result["header"]["revision"]);
            }
            if result["canceled"] == true {
                l.compacted = int(&result["compact_revision"]).or(Some(0));
                l.last_error = result["cancel_reason"].as_str().map(String::from);
                return;
            }
            for ev in result["events"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let kv = &ev["kv"];
                let (Some(revision), Some(key)) = (int(&kv["mod_revision"]), text(&kv["key"])) else { continue };
                l.events.push(Event { revision, key, value: text(&kv["value"]).unwrap_or_default() });
            }
            l.event_count = l.events.len();
        }
    }
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
