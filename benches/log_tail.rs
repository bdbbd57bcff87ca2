//! Log-tail benchmark: the last 100 lines of a 1 GB log, as `GET /api/logs/comfy` reads them.
//! `cargo bench --bench log_tail` (set `LOG_TAIL_BYTES` for another size). Prints time and memory.

use std::io::Write;
use std::time::Instant;

use orchestrator::service::logs;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let size: u64 = std::env::var("LOG_TAIL_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("comfyui.log");
    {
        // ComfyUI-like lines of ~100 bytes, written through a 1 MiB buffer.
        let mut file = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&path).expect("create"),
        );
        let mut written = 0u64;
        let mut n = 0u64;
        while written < size {
            let line = format!(
                "2026-11-24 08:00:00.000 [{n:>10}] got prompt; executing node KSampler, step {}/30\n",
                n % 30
            );
            file.write_all(line.as_bytes()).expect("write");
            written += line.len() as u64;
            n += 1;
        }
        file.flush().expect("flush");
    }
    let len = std::fs::metadata(&path).expect("metadata").len();
    let before = peak_rss_kib();

    let mut times = Vec::new();
    for _ in 0..25 {
        let started = Instant::now();
        let lines = logs::tail(&path, 100).expect("tail");
        times.push(started.elapsed());
        assert_eq!(lines.len(), 100);
    }
    let after = peak_rss_kib();
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "log tail: 100 lines of a {:.2} GB log: min {:.3} ms, median {:.3} ms, max {:.3} ms over {} runs",
        len as f64 / 1e9,
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "peak RSS: {:.1} MiB before tailing, {:.1} MiB after (growth {:.2} MiB)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after.saturating_sub(before)) as f64 / 1024.0
        );
    }
}
