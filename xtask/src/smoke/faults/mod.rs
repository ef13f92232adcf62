//! Faults: what goes wrong on purpose, as mechanisms an engine applies to a member and a
//! scenario schedules. In: a member's process (its network namespace) or its data directory.
//! Out: the fault in place until healed. `netfilter.rs` cuts a member off, drops or queues its
//! packets (iptables in its own namespace); `netdelay.rs` holds queued packets for a fixed time
//! (the hidden `delay-packets` command); `disk.rs` makes a data disk small and fills it;
//! `plan.rs` draws a soak's schedule of faults from a seed.

pub mod disk;
pub mod netdelay;
pub mod netfilter;
pub mod plan;
