//! report.html checked the way a person would look at it: Debian's Chromium, headless, takes a
//! screenshot (its pixels must show the requests and latency lines in their colours) and dumps
//! the page it rendered (every scenario and each of its steps named, every check PASS).

use std::path::Path;
use std::process::Command;

use super::{ok, require};

/// Colours of report_html.rs's series: requests per second and p99 latency.
const REQUESTS: [u8; 3] = [0x1f, 0x77, 0xb4];
const P99: [u8; 3] = [0x94, 0x67, 0xbd];

/// Chromium on `page` (bounded), with a profile of its own beside `scratch`.
fn chromium(page: &Path, scratch: &Path, extra: &[&str]) -> String {
    require("chromium");
    ok(Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg(format!("--user-data-dir={}", scratch.with_extension("chromium-profile").display()))
        .arg("--hide-scrollbars")
        .args(extra)
        .arg(format!("file://{}", page.display())))
}

/// Pixels of `rgb` (within a small tolerance for anti-aliasing) in the PNG at `png`.
fn pixels_of(png: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3, "a colour screenshot: {:?}", info.color_type);
    buf[..info.buffer_size()].chunks(step).filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 12)).count()
}

pub fn looks_right(page: &Path, scenarios: &[&str], shot: &Path) {
    assert!(page.is_file(), "{} was not written", page.display());
    let size = std::fs::metadata(page).unwrap().len();
    println!("report.html: {size} bytes");
    let html = std::fs::read_to_string(page).unwrap();
    assert!(!html.contains("<script") && !html.contains("src=\"http"), "report.html fetches nothing");

    chromium(page, shot, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,3000"]);
    let (blue, purple) = (pixels_of(shot, REQUESTS), pixels_of(shot, P99));
    println!("report.html screenshot {}: {blue} pixels of the requests line, {purple} of p99", shot.display());
    assert!(blue > 400, "the screenshot shows no requests line ({blue} pixels)");
    assert!(purple > 200, "the screenshot shows no p99 latency line ({purple} pixels)");

    let dom = chromium(page, shot, &["--dump-dom"]);
    for s in scenarios {
        assert!(dom.contains(&format!("<h2>{s}</h2>")), "the page shows no scenario {s}");
    }
    assert!(dom.contains("passed, 0 failed</h1>"), "the heading says all passed");
    assert!(dom.contains("s: no quorum: two nodes down"), "the basic scenario's no-quorum step is marked");
    assert!(!dom.contains("<td>FAIL</td>"), "a check shows FAIL");
}
