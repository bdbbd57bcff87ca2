//! Request-smuggling shapes over a raw socket: each gets a 400 or reaches ComfyUI as exactly one request.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::fake_comfy::FakeComfy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::SERIAL;
use crate::support::TestApp;

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
