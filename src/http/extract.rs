//! Query strings and bodies read the way every other input is: a malformed query is a 422 and a body over the
//! route's limit a 413, both with the shared error body, never axum's plain-text rejections.

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::extract::Query`, with its rejection turned into [`ApiError::Validation`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::invalid("query", rejection.body_text())),
        }
    }
}

/// A request body read whole, at most `LIMIT` bytes: a larger one is a 413 with the shared error body (axum's
/// own extractor answers in plain text). The handler then parses it, so a malformed body is its 422.
#[derive(Debug, Clone)]
pub struct Body<const LIMIT: usize = { 2 * 1024 * 1024 }>(pub bytes::Bytes);

impl<S, const LIMIT: usize> axum::extract::FromRequest<S> for Body<LIMIT>
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        read_whole(&parts.headers, body, LIMIT).await.map(Self)
    }
}

/// Reads `body` whole, at most `limit` bytes: a larger one is a 413, one that comes too slowly a 408
/// (`body_timeout`), one that breaks off a 422.
pub async fn read_whole(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_large = ApiError::from(crate::problems::RequestError::PayloadTooLarge {
        limit: limit as u64,
    });
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large);
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large),
        Err(error) => Err(match crate::comfy::body::timed_out(&*error) {
            Some(after) => crate::problems::RequestError::BodyTimeout { after }.into(),
            None => ApiError::invalid("body", "the body could not be read"),
        }),
    }
}

/// A route whose handler reads its body itself (rmcp's, which answers a failed read with a plain-text 500): the
/// body is read here first, under `LIMIT`, so a slow or oversized one gets the shared error body.
pub async fn read_first<const LIMIT: usize>(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match read_whole(&parts.headers, body, LIMIT).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Err(refusal) => refusal.into_response(),
    }
}
