//! Connections that never finish a request: slowloris and silent ones cut after the header-read timeout, and a
//! flood past the connection cap making room, while `/api/status` still answers.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::fake_comfy::FakeComfy;
use tokio::net::TcpStream;

use super::{SERIAL, raise_fd_limit};
use crate::support::{TestApp, client, wait_until};

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
    let latency = tokio::time::timeout(Duration::from_secs(2), status_latency(&app))
        .await
        .expect("the cap made a client wait 2 s or more for /api/status");
    let open = horde.still_open();
    eprintln!(
        "connection cap {CAP}: {HOSTILE} hostile connections opened, {} closed by the server, {open} left; \
         /api/status answered in {} ms",
        HOSTILE - open,
        latency.as_millis()
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
