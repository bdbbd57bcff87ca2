//! `/api/builder/messages`: the builder's conversation with v0, stored.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::NewMessage;

/// `GET /api/builder/messages`: the conversation, oldest first.
#[utoipa::path(get, path = "/api/builder/messages", tag = "builder",
    responses((status = 200, description = "The stored conversation", body = super::openapi::BuilderConversation)))]
pub async fn builder_messages(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let messages = state
        .store
        .messages(200)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "messages": messages, "configured": state.v0.is_configured() }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuilderRequest {
    /// 1 to 20000 characters.
    #[schema(min_length = 1, max_length = 20000)]
    message: String,
}

/// `POST /api/builder/messages {message}`: stored, sent to v0 (a new chat, or the next message of the current
/// one), and v0's answer stored with its links. The message is kept even when v0 fails.
#[utoipa::path(post, path = "/api/builder/messages", tag = "builder", request_body = BuilderRequest,
    responses((status = 200, description = "The message and v0's answer, both stored", body = super::openapi::BuilderConversation),
        (status = 415, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "The message is empty or too long", body = crate::error::ErrorBody),
        (status = 502, description = "v0 refused or could not be reached", body = crate::error::ErrorBody),
        (status = 503, description = "V0_API_KEY is not configured", body = crate::error::ErrorBody),
        (status = 504, description = "v0 did not answer in time", body = crate::error::ErrorBody)))]
pub async fn builder_send(
    State(state): State<AppState>,
    super::extract::Body(body): super::extract::Body,
) -> ApiResult<Json<Value>> {
    let request: BuilderRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    // The limit is on what was sent, as the schema says; spaces around it do not make a long message fit.
    let message = request.message.trim();
    if message.is_empty() || request.message.chars().count() > 20_000 {
        return Err(ApiError::invalid(
            "message",
            "must be 1 to 20000 characters",
        ));
    }
    if !state.v0.is_configured() {
        return Err(ApiError::NotConfigured(crate::v0::NOT_CONFIGURED));
    }
    let store = &state.store;
    let chat_id = store
        .messages(200)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .rev()
        .find_map(|m| m.chat_id);
    let asked = store
        .insert_message(NewMessage {
            role: "user",
            content: message,
            chat_id: chat_id.as_deref(),
            links: &[],
        })
        .await
        .map_err(ApiError::internal)?;
    let reply = state.v0.chat(chat_id.as_deref(), message).await?;
    let answered = store
        .insert_message(NewMessage {
            role: "assistant",
            content: &reply.text,
            chat_id: Some(&reply.chat_id),
            links: &reply.links,
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "messages": [asked, answered] })))
}
