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
        use http_body_util::BodyExt;
        let too_large = ApiError::from(crate::problems::RequestError::PayloadTooLarge {
            limit: LIMIT as u64,
        });
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > LIMIT as u64) {
            return Err(too_large);
        }
        match http_body_util::Limited::new(request.into_body(), LIMIT)
            .collect()
            .await
        {
            Ok(collected) => Ok(Self(collected.to_bytes())),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large),
            Err(error) => Err(match crate::comfy::body::timed_out(&*error) {
                Some(after) => crate::problems::RequestError::BodyTimeout { after }.into(),
                None => ApiError::invalid("body", "the body could not be read"),
            }),
        }
    }
}
