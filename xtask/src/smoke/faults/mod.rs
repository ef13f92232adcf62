//! Faults: what goes wrong on purpose, as mechanisms a scenario schedules. In: a member's
//! process (its network namespace). Out: the fault in place until healed. `netdelay.rs` holds
//! a member's queued packets for a fixed time (the hidden `delay-packets` command).

pub mod netdelay;
