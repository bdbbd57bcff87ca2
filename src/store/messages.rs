//! The builder's conversation.

use super::{Store, StoreError};
use crate::clock::now;

pub struct NewMessage<'a> {
    /// `user`, `assistant` or `system`.
    pub role: &'a str,
    pub content: &'a str,
    pub chat_id: Option<&'a str>,
    pub links: &'a [Link],
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = BuilderLink)]
pub struct Link {
    pub label: String,
    pub url: String,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = BuilderMessage)]
pub struct Message {
    pub id: String,
    pub role: String,
    pub content: String,
    pub chat_id: Option<String>,
    pub links: Vec<Link>,
    pub timestamp: String,
}

/// The builder's conversation.
impl Store {
    pub async fn insert_message(&self, message: NewMessage<'_>) -> Result<Message, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let timestamp = now();
        let links = serde_json::to_string(message.links).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO messages (id, role, content, job_id, timestamp, chat_id, links) VALUES ($1, $2, $3, NULL, $4, $5, $6)",
        )
        .bind(&id)
        .bind(message.role)
        .bind(message.content)
        .bind(&timestamp)
        .bind(message.chat_id)
        .bind(&links)
        .execute(&self.pool)
        .await?;
        Ok(Message {
            id,
            role: message.role.to_owned(),
            content: message.content.to_owned(),
            chat_id: message.chat_id.map(str::to_owned),
            links: message.links.to_vec(),
            timestamp,
        })
    }

    /// The latest `limit` messages, oldest first.
    pub async fn messages(&self, limit: u32) -> Result<Vec<Message>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>, String, String)> = sqlx::query_as(
            "SELECT id, role, content, chat_id, links, timestamp FROM \
               (SELECT * FROM messages ORDER BY timestamp DESC, id DESC LIMIT $1) AS recent ORDER BY timestamp, id",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, role, content, chat_id, links, timestamp)| Message {
                id,
                role,
                content,
                chat_id,
                links: serde_json::from_str(&links).unwrap_or_default(),
                timestamp,
            })
            .collect())
    }
}
