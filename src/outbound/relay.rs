//! A request relayed to a remote API with the server's own key (the v0 gateway, the Comfy.org egress): the body
//! read under a limit, the client's credentials and the hop's headers dropped, the answer streamed back chunk by
//! chunk under an idle limit, cleared of what belongs to the remote origin.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, header};
use http_body_util::BodyExt;

use crate::comfy::proxy::{remove_cors, remove_hop_by_hop};
use crate::problems::RequestError;

/// Request headers that never reach the remote API: credentials of Orchestrator's own origin, and what describes
/// the hop to Orchestrator rather than the request.
const DROPPED_REQUEST_HEADERS: [header::HeaderName; 8] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::ORIGIN,
    header::REFERER,
    header::CONTENT_LENGTH,
    header::ACCEPT_ENCODING,
    header::PROXY_AUTHORIZATION,
];

/// A request body read whole, up to `limit` bytes (a body too slow, too large or broken is the client's problem).
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, RequestError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| {
            if let Some(after) = crate::comfy::body::timed_out(&*error) {
                RequestError::BodyTimeout { after }
            } else if error.is::<http_body_util::LengthLimitError>() {
                RequestError::PayloadTooLarge {
                    limit: limit as u64,
                }
            } else {
                RequestError::BodyUnreadable
            }
        })
}

/// The client's request headers as they go on: hop-by-hop headers, its credentials and the hop's own dropped, and
/// `also` (a credential header of the remote API's own) with them.
pub fn forwarded_headers(mut headers: HeaderMap, also: &[&str]) -> HeaderMap {
    remove_hop_by_hop(&mut headers);
    for name in DROPPED_REQUEST_HEADERS {
        headers.remove(name);
    }
    for name in also {
        headers.remove(*name);
    }
    headers
}

/// The remote answer as Orchestrator's: its status and headers (cookies, lengths, HSTS and CORS of the remote
/// origin removed) and its body streamed, each chunk within `idle`.
pub fn stream_back(
    upstream: reqwest::Response,
    idle: Duration,
    who: &'static str,
) -> http::Response<reqwest::Body> {
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    remove_hop_by_hop(&mut headers);
    for name in [
        header::SET_COOKIE,
        header::CONTENT_LENGTH,
        header::STRICT_TRANSPORT_SECURITY,
        header::ALT_SVC,
    ] {
        headers.remove(name);
    }
    headers.remove("x-session-token");
    remove_cors(&mut headers);
    // reqwest's per-request timeout would cut a long stream; each chunk gets the idle limit instead.
    let stream = upstream.bytes_stream();
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(
        stream,
        move |mut stream| async move {
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok::<_, std::io::Error>(chunk), stream)),
                Ok(Some(Err(_))) => Some((
                    Err(std::io::Error::other(format!("{who}'s answer broke off"))),
                    stream,
                )),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::other(format!("{who} went silent"))),
                    stream,
                )),
            }
        },
    ));
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
