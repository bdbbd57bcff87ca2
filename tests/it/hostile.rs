//! Hostile load on loopback, each case bounded in count and time: slowloris and silent connections, a flood past
//! the connection cap, a thousand downloads aborted mid-body, request-smuggling shapes over a raw socket, and an
//! upstream that stalls mid-body. Each prints what it measured.
//!
//! The cases run one at a time (they share the machine's two cores and this process's file descriptors), and the
//! one that counts descriptors runs in a process of its own, where no other test opens or closes any.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use testkit::fake_comfy::FakeComfy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestApp, client, read_until_cut, wait_until};

/// One hostile case at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Raises this process's open-file soft limit to its hard limit; answers the limit now in force.
#[cfg(unix)]
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(not(unix))]
fn raise_fd_limit() -> u64 {
    u64::MAX
}

/// Open file descriptors of this process (Linux only).
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A hostile client's socket: non-blocking, outside the runtime, so hundreds of them cost one syscall each per
/// round and nothing else.
struct Hostile {
    stream: std::net::TcpStream,
    dribbles: bool,
    sent: usize,
    opened: Instant,
    closed: Option<Instant>,
    /// What the server wrote before it closed, if anything (hyper may answer 408).
    answered: Vec<u8>,
}

/// A request head that never ends: after the request line and Host, one header value that grows a byte at a time.
const DRIBBLE: &[u8] = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

impl Hostile {
    async fn open(addr: SocketAddr, dribbles: bool) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_std()
            .expect("a std socket");
        stream.set_nonblocking(true).unwrap();
        Self {
            stream,
            dribbles,
            sent: 0,
            opened: Instant::now(),
            closed: None,
            answered: Vec::new(),
        }
    }

    /// One round: send the next byte (if it dribbles) and see whether the server has closed.
    fn round(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return self.close(),
                Ok(n) => self.answered.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return self.close(),
            }
        }
        if self.dribbles {
            let byte = DRIBBLE.get(self.sent).copied().unwrap_or(b'a');
            match self.stream.write(&[byte]) {
                Ok(_) => self.sent += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => self.close(),
            }
        }
    }

    fn close(&mut self) {
        self.closed = Some(Instant::now());
    }
}

/// Opens `dribbling` connections that send a byte every 200 ms and `silent` ones that send nothing, and keeps them
/// going on a task until the server has closed them all (or the handle is dropped).
struct Horde {
    sockets: Arc<Mutex<Vec<Hostile>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Horde {
    async fn open(addr: SocketAddr, dribbling: usize, silent: usize) -> Self {
        let mut sockets = Vec::with_capacity(dribbling + silent);
        for i in 0..dribbling + silent {
            sockets.push(Hostile::open(addr, i < dribbling).await);
        }
        let sockets = Arc::new(Mutex::new(sockets));
        let shared = sockets.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                let mut sockets = shared.lock().unwrap();
                sockets.iter_mut().for_each(Hostile::round);
                if sockets.iter().all(|s| s.closed.is_some()) {
                    return;
                }
            }
        });
        Self { sockets, task }
    }

    fn still_open(&self) -> usize {
        let mut sockets = self.sockets.lock().unwrap();
        // Look now, not at the last round, so a count taken right after an answer is current.
        sockets.iter_mut().for_each(|s| {
            if !s.dribbles {
                s.round();
            }
        });
        sockets.iter().filter(|s| s.closed.is_none()).count()
    }

    /// How long each closed connection lived, in order of opening.
    fn lifetimes(&self) -> Vec<Option<Duration>> {
        let sockets = self.sockets.lock().unwrap();
        sockets
            .iter()
            .map(|s| s.closed.map(|at| at - s.opened))
            .collect()
    }
}

impl Drop for Horde {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET /api/status` on a fresh connection, with its latency.
async fn status_latency(app: &TestApp) -> Duration {
    let fresh = client();
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        fresh.get(app.url("/api/status")).send(),
    )
    .await
    .expect("/api/status answers within 5 s")
    .expect("/api/status answers");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["overall"].is_string(), "{body}");
    started.elapsed()
}

#[tokio::test]
async fn slowloris_and_silent_connections_are_cut_and_status_still_answers() {
    let _serial = SERIAL.lock().await;
    const DRIBBLING: usize = 500;
    const SILENT: usize = 200;
    let files = raise_fd_limit();
    // Both ends live in this process, plus the fake and the store.
    assert!(
        files >= 2 * (DRIBBLING + SILENT) as u64 + 256,
        "open-file limit {files} too low for {} sockets on both sides",
        DRIBBLING + SILENT
    );
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| {
        s.header_read_timeout_secs = "2".into();
    })
    .await;
    // The first report asks every probe; later ones reuse the external APIs' cached answer.
    let calm = status_latency(&app).await;

    let started = Instant::now();
    let horde = Horde::open(app.addr, DRIBBLING, SILENT).await;
    let opened_in = started.elapsed();
    let latency = status_latency(&app).await;
    let open_then = horde.still_open();
    eprintln!(
        "slowloris: /api/status answered in {} ms with {open_then} hostile connections open \
         ({DRIBBLING} dribbling, {SILENT} silent, opened in {} ms; {} ms with none)",
        latency.as_millis(),
        opened_in.as_millis(),
        calm.as_millis()
    );
    assert_eq!(
        open_then,
        DRIBBLING + SILENT,
        "the hostile connections were still open when /api/status answered"
    );

    // The server closes every one of them after the header-read timeout (2 s), dribbling or silent.
    wait_until(
        Duration::from_secs(8),
        "the server has closed every hostile connection",
        || {
            let open = horde.still_open();
            async move { open == 0 }
        },
    )
    .await;
    let lifetimes: Vec<Duration> = horde.lifetimes().into_iter().flatten().collect();
    let shortest = lifetimes.iter().min().unwrap();
    let longest = lifetimes.iter().max().unwrap();
    eprintln!(
        "slowloris: all {} hostile connections closed by the server {} to {} ms after they opened \
         (header-read timeout 2 s)",
        lifetimes.len(),
        shortest.as_millis(),
        longest.as_millis()
    );
    assert!(
        *shortest >= Duration::from_millis(1900),
        "closed before the timeout: {shortest:?}"
    );
    assert!(
        *longest < Duration::from_millis(4000),
        "closed too late: {longest:?}"
    );
    let answered: usize = horde
        .sockets
        .lock()
        .unwrap()
        .iter()
        .filter(|s| !s.answered.is_empty())
        .count();
    eprintln!("slowloris: {answered} of them got any bytes before the close");
}

#[tokio::test]
async fn past_the_connection_cap_connections_without_a_request_make_room() {
    let _serial = SERIAL.lock().await;
    const CAP: usize = 100;
    const HOSTILE: usize = 300;
    raise_fd_limit();
    let fake = FakeComfy::start().await;
    // A long header timeout: what closes the hostile connections here is the cap, not the clock.
    let app = TestApp::spawn_with(&fake.url(), |s| {
        s.header_read_timeout_secs = "30".into();
        s.max_connections = CAP.to_string();
    })
    .await;
    status_latency(&app).await;

    let horde = Horde::open(app.addr, HOSTILE / 2, HOSTILE / 2).await;
    // Every connection past the cap took the place of an older one that had sent no request.
    wait_until(
        Duration::from_secs(3),
        "the server keeps no more than the cap open",
        || {
            let open = horde.still_open();
            async move { open < CAP }
        },
    )
    .await;
    let latency = status_latency(&app).await;
    let open = horde.still_open();
    eprintln!(
        "connection cap {CAP}: {HOSTILE} hostile connections opened, {} closed by the server, {open} left; \
         /api/status answered in {} ms",
        HOSTILE - open,
        latency.as_millis()
    );
    assert!(
        latency < Duration::from_secs(2),
        "the cap made a client wait {latency:?}"
    );
    // A gateway request too, and a burst of them on fresh connections.
    for _ in 0..20 {
        let response = client()
            .get(app.url("/api/comfy/system_stats"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(horde.still_open() < CAP);
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
                "hostile::aborted_downloads_alone",
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

/// One complete HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    body: Vec<u8>,
}

/// Splits every complete response off the front of `buf`.
fn take_responses(buf: &mut Vec<u8>) -> Vec<RawResponse> {
    let mut out = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return out;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let start = end + 4;
        let (body, used) = if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            let mut at = start;
            loop {
                let Some(line) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return out;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&buf[at..at + line])
                        .split(';')
                        .next()
                        .unwrap()
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                at += line + 2;
                if buf.len() < at + size + 2 {
                    return out;
                }
                body.extend_from_slice(&buf[at..at + size]);
                at += size + 2;
                if size == 0 {
                    break (body, at);
                }
            }
        } else {
            let length: usize = header("content-length:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < start + length {
                return out;
            }
            (buf[start..start + length].to_vec(), start + length)
        };
        buf.drain(..used);
        out.push(RawResponse { status, body });
    }
}

/// Sends `request`; after its answer (if the connection stays open) a marker `GET /api/health` that closes it.
/// Answers every response in order, until the server closes the connection.
async fn exchange(addr: SocketAddr, request: &str) -> Vec<RawResponse> {
    const MARKER: &[u8] =
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let mut marker_sent = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer or a close within 10 s");
        let n = read.unwrap_or(0);
        if n == 0 {
            return responses;
        }
        buf.extend_from_slice(&chunk[..n]);
        responses.extend(take_responses(&mut buf));
        if !responses.is_empty() && !marker_sent {
            marker_sent = true;
            // The server may have closed already; then the marker is simply not read.
            let _ = stream.write_all(MARKER).await;
        }
    }
}

#[tokio::test]
async fn request_smuggling_shapes_get_400_or_exactly_one_request_upstream() {
    let _serial = SERIAL.lock().await;
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    // The request that must never be seen as a request of its own, by us or by ComfyUI.
    let smuggled = "GET /api/comfy/system_stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let head = "POST /api/comfy/interrupt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
    let n = smuggled.len();
    let chunked_end = format!("0\r\n\r\n{smuggled}");
    let in_a_chunk = format!("{n:x}\r\n{smuggled}\r\n0\r\n\r\n");
    let shapes: Vec<(&str, String)> = vec![
        (
            "CL.TE: Content-Length covers what chunked ends before",
            format!(
                "{head}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_end}",
                chunked_end.len()
            ),
        ),
        (
            "TE.CL: Transfer-Encoding first, then a short Content-Length",
            format!("{head}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{in_a_chunk}"),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!(
                "{head}Transfer-Encoding: chunked, identity\r\nContent-Length: {n}\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding: identity",
            format!("{head}Transfer-Encoding: identity\r\nContent-Length: {n}\r\n\r\n{smuggled}"),
        ),
        (
            "two Transfer-Encoding lines, chunked then identity",
            format!(
                "{head}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunked_end}"
            ),
        ),
        (
            "Transfer-Encoding: xchunked",
            format!("{head}Transfer-Encoding: xchunked\r\n\r\n{chunked_end}"),
        ),
        (
            "Transfer-Encoding with a space before the colon",
            format!("{head}Transfer-Encoding : chunked\r\nContent-Length: {n}\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold in Transfer-Encoding",
            format!(
                "{head}Transfer-Encoding: identity\r\n chunked\r\nContent-Length: {n}\r\n\r\n{smuggled}"
            ),
        ),
        (
            "obs-fold: Transfer-Encoding's value on the next line",
            format!("{head}Transfer-Encoding:\r\n chunked\r\n\r\n{chunked_end}"),
        ),
        (
            "duplicate, differing Content-Length",
            format!(
                "{head}Content-Length: 2\r\nContent-Length: {}\r\n\r\n{{}}{smuggled}",
                n + 2
            ),
        ),
        (
            "Content-Length as a list of differing values",
            format!("{head}Content-Length: 2, {}\r\n\r\n{{}}{smuggled}", n + 2),
        ),
        (
            "Content-Length with a plus sign",
            format!("{head}Content-Length: +{n}\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length with a minus sign",
            format!("{head}Content-Length: -1\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length with a space inside",
            format!("{head}Content-Length: 1 {}\r\n\r\n{smuggled}", n - 10),
        ),
        (
            "Content-Length in hex",
            format!("{head}Content-Length: 0x{n:x}\r\n\r\n{smuggled}"),
        ),
        (
            "chunked on HTTP/1.0",
            format!(
                "POST /api/comfy/interrupt HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{chunked_end}"
            ),
        ),
        (
            "a chunk size that overflows",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n{smuggled}"),
        ),
        (
            "a second request inside a Content-Length body",
            format!("{head}Content-Length: {n}\r\n\r\n{smuggled}"),
        ),
        (
            "a second request inside a chunked body",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n{in_a_chunk}"),
        ),
        (
            "Content-Length padded with spaces (legal)",
            format!("{head}Content-Length:   {n}  \r\n\r\n{smuggled}"),
        ),
        (
            "the same Content-Length twice (legal)",
            format!("{head}Content-Length: {n}\r\nContent-Length: {n}\r\n\r\n{smuggled}"),
        ),
    ];

    for (name, request) in &shapes {
        let before = fake.request_count();
        let responses = exchange(app.addr, request).await;
        let upstream = fake.request_count() - before;
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        eprintln!(
            "smuggling: {name}: answers {statuses:?} (a second 200 is the marker's), {upstream} request(s) upstream"
        );
        // What follows the answer to the hostile request may only be the marker's answer.
        let (first, rest) = match responses.split_first() {
            Some((first, rest)) => (Some(first), rest),
            None => (None, &[][..]),
        };
        for extra in rest {
            assert!(
                extra.status == 200 && extra.body.windows(13).any(|w| w == b"\"status\":\"ok\""),
                "{name}: a second answer that is not the marker's: {} {}",
                extra.status,
                String::from_utf8_lossy(&extra.body)
            );
        }
        assert!(rest.len() <= 1, "{name}: {statuses:?}");
        match first.map(|r| (r.status, r)) {
            None => assert_eq!(upstream, 0, "{name}: closed, yet forwarded"),
            // A body that breaks after the head was forwarded: ComfyUI may have seen that one request begin.
            Some((400, r)) if r.body.windows(14).any(|w| w == b"\"invalid_body\"") => {
                assert!(upstream <= 1, "{name}: {upstream} upstream requests")
            }
            // Refused by the HTTP parser: nothing went further.
            Some((400, _)) => assert_eq!(upstream, 0, "{name}: refused, yet forwarded"),
            Some((status, _)) => {
                assert_eq!(upstream, 1, "{name}: answered {status}");
                let seen = fake.requests().pop().unwrap();
                assert_eq!(seen.path, "/interrupt", "{name}");
                assert!(
                    !(seen.headers.contains_key("content-length")
                        && seen.headers.contains_key("transfer-encoding")),
                    "{name}: ComfyUI got two framings: {:?}",
                    seen.headers
                );
            }
        }
    }
    // The legal shapes really are served, so the loop above was not vacuous.
    assert!(fake.requests().iter().any(|r| r.path == "/interrupt"));
    // Found here: a broken chunked body was answered 502 comfy_unreachable, and logged as ComfyUI's failure.
    let (_, overflow) = shapes
        .iter()
        .find(|(name, _)| name.starts_with("a chunk size"))
        .unwrap();
    let responses = exchange(app.addr, overflow).await;
    assert_eq!(responses[0].status, 400);
    let body: serde_json::Value = serde_json::from_slice(&responses[0].body).unwrap();
    assert_eq!(crate::support::error_code(&body), "invalid_body");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_after_the_idle_timeout_with_a_log_line() {
    let _serial = SERIAL.lock().await;
    // This test's runtime is single-threaded, so the server's tasks log on this thread, into this subscriber.
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    const TOKEN: &str = "hostile-test-token-0123456789";
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| {
        s.comfy_idle_timeout_secs = "1".into();
        s.token = Some(TOKEN.into());
    })
    .await;
    let started = Instant::now();
    let response = app
        .http
        .get(app.url("/api/comfy/view?filename=stall.bin&note=query-never-logged"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (received, ended_with_error) = read_until_cut(response).await;
    let took = started.elapsed();
    assert!(ended_with_error, "a cut stream must not look complete");
    assert_eq!(received, 64 * 1024);
    assert!(took >= Duration::from_secs(1), "cut after {took:?}");
    wait_until(Duration::from_secs(2), "the cut is logged", || {
        let logged = log.text().contains("stream idle too long");
        async move { logged }
    })
    .await;
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("stream idle too long"))
        .unwrap();
    eprintln!(
        "stall: the stream ended after {} ms; logged: {line}",
        took.as_millis()
    );
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("/api/comfy/view"),
        "the route is named: {line}"
    );
    assert!(line.contains("idle_secs=1"), "the timeout is named: {line}");
    assert!(line.contains("ComfyUI response body"), "{line}");
    assert!(
        !text.contains("query-never-logged"),
        "the query leaked: {text}"
    );
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
}
