//! The drills' network delay, `xtask delay-packets`, on its own: in a network namespace of the
//! test's, an iptables NFQUEUE rule hands one TCP port's packets to it, and round trips over
//! loopback must take the delay it was given, and not before the rule.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ok, omission, xtask_fails, XTASK};

/// A network namespace of this test's, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Milliseconds of `rounds` one-byte round trips over `conn` (the peer echoes).
fn round_trips(conn: &mut TcpStream, rounds: usize) -> Vec<u128> {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            conn.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            conn.read_exact(&mut b).unwrap();
            t.elapsed().as_millis()
        })
        .collect()
}

#[test]
fn delay_packets_holds_each_queued_packet_for_the_delay() {
    if !xtask::util::is_root() {
        omission("netdelay", "not root: network namespaces and iptables need root");
        return;
    }
    let ns = Netns(format!("xtask-nd-{}", std::process::id()));
    ok(Command::new("ip").args(["netns", "add", &ns.0]));
    ok(Command::new("ip").args(["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]));

    let mut delayer = Command::new("ip")
        .args(["netns", "exec", &ns.0, XTASK, "delay-packets", "--queue", "3", "--delay-ms", "150", "--seconds", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(delayer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "bound");

    // Sockets in the namespace: setns moves only this thread.
    let (to_main, from_thread) = mpsc::channel();
    let (to_thread, from_main) = mpsc::channel::<()>();
    let name = ns.0.clone();
    let client = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            for conn in listener.incoming().take(2) {
                let mut conn = conn.unwrap();
                let mut b = [0u8; 1];
                while conn.read_exact(&mut b).is_ok() {
                    conn.write_all(&b).unwrap();
                }
            }
        });
        let mut before = TcpStream::connect(("127.0.0.1", port)).unwrap();
        before.set_nodelay(true).unwrap();
        let undelayed = round_trips(&mut before, 5);
        drop(before);
        to_main.send(port).unwrap();
        from_main.recv().unwrap();
        let mut after = TcpStream::connect(("127.0.0.1", port)).unwrap();
        after.set_nodelay(true).unwrap();
        let delayed = round_trips(&mut after, 5);
        drop(after);
        echo.join().unwrap();
        (undelayed, delayed)
    });
    let port = from_thread.recv_timeout(Duration::from_secs(10)).unwrap().to_string();
    // Only the way to the port is queued: one delay per round trip.
    let rule = ["-A", "OUTPUT", "-p", "tcp", "--dport", &port, "-j", "NFQUEUE", "--queue-num", "3", "--queue-bypass"];
    ok(Command::new("ip").args(["netns", "exec", &ns.0, "iptables", "-w", "5"]).args(rule));
    to_thread.send(()).unwrap();
    let (undelayed, delayed) = client.join().unwrap();
    ok(Command::new("ip").args(["netns", "exec", &ns.0, "iptables", "-F", "OUTPUT"]));
    println!("round trips before the rule {undelayed:?} ms, with it {delayed:?} ms");
    // The delayer makes every round trip at least 150 ms; without it they are far shorter (the
    // fastest of five: a loaded machine may stall one, as the suite's start does).
    assert!(undelayed.iter().min().is_some_and(|ms| *ms < 50), "before the rule: {undelayed:?} ms");
    assert!(delayed.iter().all(|ms| (150..1000).contains(ms)), "with 150 ms delay: {delayed:?} ms");

    let status = delayer.wait().unwrap();
    let summary = lines.next().unwrap().unwrap();
    assert!(status.success(), "{status}: {summary}");
    println!("{summary}");
    let held: u64 = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(held >= 7, "the handshake and five bytes went through the queue: {summary}");
}

#[test]
fn delay_packets_refuses_a_delay_that_would_not_end() {
    let err = xtask_fails(&["delay-packets", "--queue", "3", "--delay-ms", "10", "--seconds", "0"]);
    assert!(err.contains("--seconds 0 is outside 1..=600"), "{err}");
}
