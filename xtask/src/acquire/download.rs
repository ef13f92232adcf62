//! Downloads one artifact and verifies it while it streams.
//! In: a URL (http, https or file) and the pinned SHA-256. Out: the file at its destination,
//! only if the sum matched; otherwise nothing at all, and an error saying what went wrong.

use std::fmt;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::util::{human_bytes, temp_sibling, HashingWriter, Sha256Hex};

/// Refuse anything bigger: an etcd tarball is about 20 MB.
const MAX_BYTES: u64 = 1 << 30;

/// Why a download did not produce a verified file.
#[derive(Debug)]
pub enum DownloadError {
    /// The bytes arrived but are not the pinned ones. Never try another source after this.
    Mismatch { url: String, expected: Sha256Hex, actual: Sha256Hex },
    /// The source could not deliver (network, HTTP status, truncation, time-out, missing file).
    Unavailable { url: String, reason: anyhow::Error },
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownloadError::Mismatch { url, expected, actual } => write!(
                f,
                "SHA-256 mismatch for {url}: expected {expected} (pinned), got {actual}; the download was deleted \
                 and no other source was tried: check the mirror, or the pinned sum if you changed it"
            ),
            DownloadError::Unavailable { url, reason } => write!(f, "{url}: {reason:#}"),
        }
    }
}

impl std::error::Error for DownloadError {}

/// Time-outs for one download; `XTASK_CONNECT_TIMEOUT` / `XTASK_READ_TIMEOUT` (seconds) override.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

impl Timeouts {
    pub fn from_env() -> anyhow::Result<Self> {
        let secs = |var: &str, default: u64| -> anyhow::Result<Duration> {
            match std::env::var(var) {
                Ok(v) => {
                    let n: f64 = v.trim().parse().with_context(|| format!("{var}={v:?} is not a number of seconds"))?;
                    if !(n > 0.0 && n < 86400.0) {
                        anyhow::bail!("{var}={v:?} must be between 0 and 86400 seconds");
                    }
                    Ok(Duration::from_secs_f64(n))
                }
                Err(_) => Ok(Duration::from_secs(default)),
            }
        };
        Ok(Timeouts { connect: secs("XTASK_CONNECT_TIMEOUT", 15)?, read: secs("XTASK_READ_TIMEOUT", 30)? })
    }
}

/// Streams `url` into a temp file beside `dest` while hashing; renames it to `dest` only when
/// the sum is `expected`.
pub fn download_verified(url: &str, dest: &Path, expected: Sha256Hex, timeouts: Timeouts) -> Result<(), DownloadError> {
    let tmp = temp_sibling(dest);
    let unavailable = |reason: anyhow::Error| DownloadError::Unavailable { url: url.to_string(), reason };
    let result = (|| {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))
                .map_err(unavailable)?;
        }
        let (reader, length) = open(url, timeouts).map_err(unavailable)?;
        let file =
            fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display())).map_err(unavailable)?;
        let mut out = HashingWriter::new(io::BufWriter::new(file));
        copy_with_progress(reader, &mut out, length, url).map_err(unavailable)?;
        let (buf, actual, written) = out.finish();
        let file =
            buf.into_inner().map_err(|e| unavailable(anyhow!("cannot write {}: {}", tmp.display(), e.error())))?;
        file.sync_all().with_context(|| format!("cannot sync {}", tmp.display())).map_err(unavailable)?;
        if let Some(len) = length {
            if written != len {
                return Err(unavailable(anyhow!("truncated: got {written} of {len} bytes")));
            }
        }
        if actual != expected {
            return Err(DownloadError::Mismatch { url: url.to_string(), expected, actual });
        }
        fs::rename(&tmp, dest)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))
            .map_err(unavailable)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

type Body = Box<dyn Read + Send>;

fn open(url: &str, timeouts: Timeouts) -> anyhow::Result<(Body, Option<u64>)> {
    if let Some(path) = url.strip_prefix("file://") {
        let file = fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
        let len = file.metadata().with_context(|| format!("cannot stat {path}"))?.len();
        return Ok((Box::new(file), Some(len)));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(timeouts.connect))
        .timeout_per_read(Some(timeouts.read))
        .max_redirects(5)
        .user_agent(concat!("etcd-xtask/", env!("CARGO_PKG_VERSION")))
        // A status is answered below with its reason, not as a bare error.
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent.get(url).call().map_err(|e| {
        let kind = match &e {
            ureq::Error::HostNotFound => "name resolution failed",
            // ureq hands on std's resolver error, whose text is fixed on unix.
            ureq::Error::Io(io) if io.to_string().starts_with("failed to lookup address") => "name resolution failed",
            ureq::Error::ConnectionFailed => "connection failed",
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => "connection failed",
            ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => "connection failed",
            ureq::Error::Timeout(_) => "stalled",
            ureq::Error::TooManyRedirects => "too many redirects",
            ureq::Error::Io(_) => "network error",
            _ => "transport error",
        };
        anyhow::anyhow!("{kind}: {e}")
    })?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!("HTTP status {} {}", status.as_u16(), status.canonical_reason().unwrap_or_default());
    }
    let length = match resp.headers().get("content-length") {
        Some(v) => {
            let v = v.to_str().unwrap_or_default();
            Some(v.trim().parse::<u64>().with_context(|| format!("bad Content-Length {v:?}"))?)
        }
        None => None,
    };
    if length.is_some_and(|l| l > MAX_BYTES) {
        anyhow::bail!("refusing a body of {} bytes (limit {MAX_BYTES})", length.unwrap_or_default());
    }
    Ok((Box::new(resp.into_body().into_reader()), length))
}

/// A read that waited longer than the read time-out: the socket's own error, or ureq's
/// (which it hands through `io::Error`).
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
        || matches!(e.get_ref().and_then(|inner| inner.downcast_ref::<ureq::Error>()), Some(ureq::Error::Timeout(_)))
}

/// Copies with a progress bar on a terminal, and a plain line per quarter otherwise.
fn copy_with_progress(mut reader: Body, out: &mut impl Write, length: Option<u64>, url: &str) -> anyhow::Result<u64> {
    let tty = io::stderr().is_terminal();
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut done: u64 = 0;
    let mut last_draw = Instant::now();
    let mut next_quarter = 1u64;
    eprintln!("downloading {url}{}", length.map(|l| format!(" ({})", human_bytes(l))).unwrap_or_default());
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                anyhow::bail!("stalled: no data for the read time-out after {done} bytes ({e})")
            }
            Err(e) => anyhow::bail!("connection broke after {done} bytes: {e}"),
        };
        out.write_all(&buf[..n]).context("cannot write the download")?;
        done += n as u64;
        if done > MAX_BYTES {
            anyhow::bail!("body exceeds {MAX_BYTES} bytes");
        }
        if tty && last_draw.elapsed() > Duration::from_millis(100) {
            draw_bar(done, length, started);
            last_draw = Instant::now();
        } else if !tty {
            if let Some(len) = length.filter(|l| *l > 0) {
                while next_quarter < 4 && done * 4 >= len * next_quarter {
                    eprintln!("  {}% of {}", next_quarter * 25, human_bytes(len));
                    next_quarter += 1;
                }
            }
        }
    }
    if tty {
        draw_bar(done, length, started);
        eprintln!();
    }
    eprintln!("  received {} in {:.1} s", human_bytes(done), started.elapsed().as_secs_f64());
    Ok(done)
}

fn draw_bar(done: u64, length: Option<u64>, started: Instant) {
    let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
    let line = match length.filter(|l| *l > 0) {
        Some(len) => {
            let width = 30usize;
            let filled = ((done.min(len) as f64 / len as f64) * width as f64) as usize;
            format!(
                "\r  [{}{}] {:>3}% {} / {} {}/s ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                done * 100 / len,
                human_bytes(done),
                human_bytes(len),
                human_bytes(rate as u64)
            )
        }
        None => format!("\r  {} {}/s ", human_bytes(done), human_bytes(rate as u64)),
    };
    let mut err = io::stderr();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}
