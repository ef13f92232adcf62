//! What a smoke run needs of this machine: a free loopback port for a published port or a
//! helper's listener, a child process of ours that is killed and reaped when dropped, Ctrl-C
//! (`Interrupt`), a command's answer as a reason, and a thread moved into a network namespace.
//! In: nothing but the host. Out: a port number; guards; a flag long waits poll.

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Set by Ctrl-C (or SIGTERM); long waits poll it and give up, so that the resources are
/// dropped and removed on the way out.
#[derive(Clone)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        ctrlc::set_handler(move || {
            eprintln!("\nsmoke: interrupted; removing what this run created");
            f.store(true, Ordering::SeqCst);
        })
        .context("cannot install the Ctrl-C handler")?;
        Ok(Interrupt(flag))
    }

    pub fn check(&self) -> Result<()> {
        if self.0.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// A command's trimmed stdout when it succeeded, else its trimmed stderr as the reason.
pub fn stdout_or_stderr(out: Output) -> std::result::Result<String, String> {
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/NAME`): its
/// sockets are the namespace's from now on.
pub fn enter_netns(path: &Path) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open the network namespace {}", path.display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: setns on a valid descriptor of a network namespace affects this thread only.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("cannot enter the network namespace {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}
