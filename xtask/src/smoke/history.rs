//! The history the client load records and the checkers read: every operation a client made,
//! with its invoke and return time, its result and the store's revision (Jepsen's history).
//! In: nothing (pure data). Out: the types both sides share, saved as JSON beside a report
//! whose history failed its check.

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
