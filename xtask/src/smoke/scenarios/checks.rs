//! What the scenarios check the same way on every engine. In: the members (through
//! [`Run`](super::run::Run)) and what the checks need to know of them. Out: each check's reason, or
//! why it failed.

/// The connections every engine must see refused, with etcd's reason.
pub(crate) const REFUSALS: [(&str, Refusal); 4] = [
    ("refused: no client certificate", Refusal::NoCert),
    ("refused: client certificate from another CA", Refusal::OtherCa),
    ("refused: plain http on the client port", Refusal::PlainHttp),
    ("refused: client certificate on the peer port", Refusal::ClientOnPeer),
];

#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    NoCert,
    OtherCa,
    PlainHttp,
    ClientOnPeer,
}

/// The `error` field of an etcd (zap) log line, or the line itself.
pub(crate) fn server_reason(line: &str) -> String {
    if let Some(start) = line.find('{') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[start..]) {
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                return e.to_string();
            }
        }
    }
    line.trim().to_string()
}
