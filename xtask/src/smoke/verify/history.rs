//! The history the client load records and the checkers read: every operation a client made,
//! with its invoke and return time, its result and the store's revision (Jepsen's history), and
//! what each watcher saw. In: nothing (pure data). Out: the types both sides share; the
//! operations are saved as JSON beside a report whose history failed its check.

use serde::{Deserialize, Serialize};

/// What one operation did to its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A put of this value.
    Write(String),
    /// A linearizable read that returned this value (`None`: the key was absent).
    Read(Option<String>),
}

/// One client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Which client (load worker) made it; a client makes one operation at a time.
    pub client: usize,
    pub key: String,
    pub action: Action,
    /// Microseconds since the load started.
    pub invoke_us: u64,
    /// `None`: a write whose outcome is unknown (it may have taken effect at any later time).
    pub return_us: Option<u64>,
    /// The store's revision in the answer's header.
    pub revision: Option<i64>,
}

/// One event a watcher received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    pub value: String,
}

/// One message of a watch stream, whatever carried it.
pub struct WatchMessage {
    /// The store's revision when the watch was created (its first message).
    pub created_at: Option<i64>,
    /// The watch was canceled: the compacted revision (0 if none) and etcd's reason.
    pub canceled: Option<(i64, String)>,
    pub events: Vec<Event>,
}

/// What one watcher saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchLog {
    /// Which endpoint (member) it watched.
    pub member: usize,
    /// The revision its first stream started after.
    pub base: Option<i64>,
    #[serde(skip)]
    pub events: Vec<Event>,
    pub event_count: usize,
    /// Streams opened (the first, then one per resumption).
    pub streams: u64,
    /// Attempts that failed to open a stream (the member down or unreachable).
    pub failed_attempts: u64,
    /// etcd canceled the watch because the revision to resume from was compacted.
    pub compacted: Option<i64>,
    pub last_error: Option<String>,
}

impl WatchLog {
    /// The revision of its last event, or the one its first stream started after.
    pub fn last(&self) -> Option<i64> {
        self.events.last().map(|e| e.revision).or(self.base)
    }
}
