//! `cargo xtask delay-packets` (hidden; the drills run it): holds every packet an iptables
//! `NFQUEUE` rule hands to its queue for a fixed time, then lets it go, in order. It is the
//! delay half of `tc netem` for kernels built without `sch_netem`; a netfilter queue is in any
//! kernel with `NETFILTER_NETLINK_QUEUE`. It runs inside a member's network namespace
//! (`nsenter -n`, queues belong to a namespace), says `bound` once it listens (the rule's
//! `--queue-bypass` lets packets through while nobody does), and ends by itself after
//! `--seconds`, releasing whatever it still holds: a drill that dies leaves no packet stuck.
//! In: a queue number, a delay, a lifetime (and, for [`Delayer`], a member's pid). Out: the
//! queue's packets released late; how many it held and for how long.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

/// How many packets the kernel may hold for us: a 2 s delay of a busy leader's peer traffic
/// is a few thousand.
const QUEUE_MAX_LEN: u32 = 65_536;

#[derive(Debug, Args)]
pub struct DelayPackets {
    /// The netfilter queue to serve (the rule's `--queue-num`).
    #[arg(long)]
    queue: u16,
    /// How long each packet is held, in milliseconds.
    #[arg(long)]
    delay_ms: u64,
    /// How long to serve the queue before releasing everything and exiting.
    #[arg(long)]
    seconds: u64,
}

impl DelayPackets {
    pub fn run(&self) -> Result<()> {
        if self.seconds == 0 || self.seconds > 600 {
            bail!("--seconds {} is outside 1..=600: the delay must end by itself", self.seconds);
        }
        let mut q = nfq::Queue::open()
            .context("cannot open a netfilter queue socket: run as root, in a kernel with NETFILTER_NETLINK_QUEUE")?;
        q.bind(self.queue).with_context(|| format!("cannot bind netfilter queue {}", self.queue))?;
        // Only the packet's metadata comes up: the verdict does not need its bytes.
        q.set_copy_range(self.queue, 0).context("cannot set the queue's copy range")?;
        q.set_queue_max_len(self.queue, QUEUE_MAX_LEN).context("cannot set the queue's length")?;
        q.set_nonblocking(true);
        let mut out = std::io::stdout();
        writeln!(out, "bound").and_then(|_| out.flush()).context("cannot tell the drill the queue is bound")?;

        let delay = Duration::from_millis(self.delay_ms);
        let end = Instant::now() + Duration::from_secs(self.seconds);
        let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
        let (mut passed, mut most_held) = (0u64, 0usize);
        loop {
            let now = Instant::now();
            let ending = now >= end;
            while let Some((due, _)) = held.front() {
                if *due > now && !ending {
                    break;
                }
                if let Some((_, mut msg)) = held.pop_front() {
                    msg.set_verdict(nfq::Verdict::Accept);
                    q.verdict(msg).context("cannot release a held packet")?;
                    passed += 1;
                }
            }
            if ending {
                break;
            }
            match q.recv() {
                Ok(msg) => {
                    held.push_back((Instant::now() + delay, msg));
                    most_held = most_held.max(held.len());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let next = held.front().map(|(due, _)| due.saturating_duration_since(now)).unwrap_or(delay);
                    std::thread::sleep(next.min(Duration::from_millis(1)));
                }
                Err(e) => return Err(e).context("cannot read the netfilter queue"),
            }
        }
        writeln!(out, "{passed} packets held {} ms each, at most {most_held} at once", self.delay_ms)
            .and_then(|_| out.flush())
            .context("cannot write the summary")?;
        Ok(())
    }
}

/// A `delay-packets` of ours serving a queue in another process's network namespace.
pub struct Delayer {
    child: Child,
    lines: mpsc::Receiver<String>,
    serve: Duration,
}

impl Delayer {
    /// Starts it in the network namespace of process `pid` (`nsenter -n`) for `serve`, and
    /// waits (bounded) until it has bound `queue`.
    pub fn start(pid: &str, queue: &str, delay_ms: u64, serve: Duration) -> Result<Delayer> {
        // This very binary, even when a rebuild has replaced the file meanwhile.
        let exe = format!("/proc/{}/exe", std::process::id());
        let mut child = Command::new("nsenter")
            .args(["-t", pid, "-n"])
            .arg(&exe)
            .args(["delay-packets", "--queue", queue, "--delay-ms", &delay_ms.to_string()])
            .args(["--seconds", &serve.as_secs().max(1).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the packet delayer in the member's namespace (nsenter, util-linux)")?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut delayer = Delayer { child, lines, serve };
        match delayer.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line == "bound" => Ok(delayer),
            _ => {
                let err = delayer.stop();
                bail!("the packet delayer did not bind queue {queue}: {}", err.trim())
            }
        }
    }

    /// Waits (bounded) for it to end by itself; its summary line.
    pub fn finish(mut self) -> Result<String> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for the packet delayer")? {
                let summary = self.lines.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
                if !status.success() {
                    bail!("the packet delayer failed ({status}): {}", self.stop().trim());
                }
                return Ok(summary);
            }
            if t.elapsed() > self.serve + Duration::from_secs(10) {
                let err = self.stop();
                bail!("the packet delayer did not end within {:?}; killed. {}", self.serve, err.trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it if it still runs; what it wrote on stderr.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}
