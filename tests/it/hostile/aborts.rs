//! A thousand downloads aborted mid-body leave no upstream connection, descriptor or task behind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use testkit::fake_comfy::FakeComfy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{SERIAL, raise_fd_limit};
use crate::support::{TestApp, wait_until};

/// Open file descriptors of this process (Linux only).
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The parent of the descriptor-counting case: runs it alone in a child process, so this process's other tests
/// (their sockets, servers and files) cannot change the count.
#[tokio::test]
async fn aborted_downloads_leave_no_connection_descriptor_or_task_behind() {
    let _serial = SERIAL.lock().await;
    if open_fds().is_none() {
        eprintln!("aborts: no /proc/self/fd on this system; skipped");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(exe)
            .args([
                "--exact",
                "hostile::aborts::aborted_downloads_alone",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the child test ends within 60 s")
    .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child test failed:\n{stdout}\n{stderr}"
    );
}

/// Reads a download's head and a little of its body, then hangs up. Answers the bytes read.
async fn abort_one(addr: SocketAddr, path: &str) -> usize {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::with_capacity(32 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the download starts within 10 s")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= end + 4 + 4096
        {
            assert!(
                got.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&got[..end])
            );
            break;
        }
    }
    // Dropped with unread data: the kernel answers the next segment with a reset.
    got.len()
}

#[tokio::test]
#[ignore = "run alone in its own process by aborted_downloads_leave_no_connection_descriptor_or_task_behind"]
async fn aborted_downloads_alone() {
    const ABORTS: usize = 1000;
    const AT_ONCE: usize = 50;
    const DOWNLOAD: &str = "/api/comfy/view?filename=large.bin&size=67108864";
    raise_fd_limit();
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    // Warm up what is made once (pools, timers, buffers), then let it settle.
    for _ in 0..AT_ONCE {
        abort_one(app.addr, DOWNLOAD).await;
    }
    wait_until(
        Duration::from_secs(5),
        "the warm-up's upstream connections are closed",
        || {
            let open = fake.open_connections();
            async move { open == 0 }
        },
    )
    .await;
    let (fds_before, tasks_before, upstream_before) =
        (open_fds().unwrap(), alive_tasks(), fake.open_connections());

    let started = Instant::now();
    let read: usize = futures_util::stream::iter(0..ABORTS)
        .map(|_| abort_one(app.addr, DOWNLOAD))
        .buffer_unordered(AT_ONCE)
        .fold(0, |sum, n| async move { sum + n })
        .await;
    let last_abort = Instant::now();
    let peak_fds = open_fds().unwrap();
    eprintln!(
        "aborts: {ABORTS} downloads ({AT_ONCE} at a time) aborted mid-body in {} ms, {} KiB read in all; \
         {} upstream connections open at the end",
        started.elapsed().as_millis(),
        read / 1024,
        fake.open_connections()
    );

    wait_until(
        Duration::from_secs(1),
        "every upstream connection to ComfyUI is closed",
        || {
            let open = fake.open_connections();
            async move { open <= upstream_before }
        },
    )
    .await;
    let upstream_closed_in = last_abort.elapsed();
    let settled = |fds: usize, tasks: usize| fds <= fds_before + 10 && tasks <= tasks_before + 10;
    wait_until(
        Duration::from_secs(5),
        "descriptors and tasks are back to their baseline (+10)",
        || {
            let ok = settled(open_fds().unwrap(), alive_tasks());
            async move { ok }
        },
    )
    .await;
    eprintln!(
        "aborts: upstream connections back to {} within {} ms of the last abort; fds {fds_before} before, \
         {peak_fds} right after, {} now; tokio tasks {tasks_before} before, {} now",
        upstream_before,
        upstream_closed_in.as_millis(),
        open_fds().unwrap(),
        alive_tasks()
    );
    // Still serving.
    let response = app
        .http
        .get(app.url("/api/comfy/system_stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
