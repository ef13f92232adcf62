//! What a smoke run needs of this machine: a free loopback port for a published port or a
//! helper's listener, and a child process of ours that is killed and reaped when dropped.
//! In: nothing but the host. Out: a port number; a guard.

use std::net::TcpListener;

use anyhow::{bail, Context, Result};

/// Our own child process, killed and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
/// A free TCP port on loopback for a published container port (and our helpers' listeners),
/// picked at random below the kernel's ephemeral range. A port of that range, released for
/// podman to bind, can meanwhile become the local end of any outgoing connection on the
/// machine (a CI run lost a member's port that way), and so can the port of a container being
/// restarted; below the range only an explicit bind takes a port.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u16 = 10000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    if low <= FLOOR + 1000 {
        let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
        return Ok(l.local_addr().context("no local address")?.port());
    }
    for _ in 0..500 {
        let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = FLOOR + (r % u64::from(low - FLOOR)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {FLOOR} and {low} after 500 tries")
}
