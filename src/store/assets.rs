//! Asset records of the Comfy API v2: an id over a blob named by its blake3 hash (the blobs are files, kept by
//! `crate::assets`).

use super::{Store, StoreError};

/// One asset record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRecord {
    pub id: String,
    /// `blake3:<hex>`.
    pub hash: String,
    pub size_bytes: i64,
    pub content_type: String,
    pub file_path: Option<String>,
    pub tags: Vec<String>,
    pub created_at: String,
}

type AssetRow = (String, String, i64, String, Option<String>, String, String);

fn record(
    (id, hash, size_bytes, content_type, file_path, tags, created_at): AssetRow,
) -> AssetRecord {
    AssetRecord {
        id,
        hash,
        size_bytes,
        content_type,
        file_path,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        created_at,
    }
}

impl Store {
    pub async fn insert_asset(&self, asset: &AssetRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO assets (id, hash, size_bytes, content_type, file_path, tags, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&asset.id)
        .bind(&asset.hash)
        .bind(asset.size_bytes)
        .bind(&asset.content_type)
        .bind(&asset.file_path)
        .bind(serde_json::to_string(&asset.tags).unwrap_or_else(|_| "[]".into()))
        .bind(&asset.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn asset(&self, id: &str) -> Result<Option<AssetRecord>, StoreError> {
        let row: Option<AssetRow> = sqlx::query_as(
            "SELECT id, hash, size_bytes, content_type, file_path, tags, created_at FROM assets WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(record))
    }

    /// The oldest record over the blob `hash`; with `file_path`, only one placed under that path.
    pub async fn asset_with_hash(
        &self,
        hash: &str,
        file_path: Option<&str>,
    ) -> Result<Option<AssetRecord>, StoreError> {
        let row: Option<AssetRow> = sqlx::query_as(
            "SELECT id, hash, size_bytes, content_type, file_path, tags, created_at FROM assets \
             WHERE hash = $1 AND (CAST($2 AS TEXT) IS NULL OR file_path = $2) ORDER BY created_at, id LIMIT 1",
        )
        .bind(hash)
        .bind(file_path)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(record))
    }

    /// Removes a record; answers the hash it had and how many records still use that blob, `None` when there was
    /// no such record.
    pub async fn delete_asset(&self, id: &str) -> Result<Option<(String, i64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let hash: Option<(String,)> =
            sqlx::query_as("DELETE FROM assets WHERE id = $1 RETURNING hash")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((hash,)) = hash else {
            return Ok(None);
        };
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM assets WHERE hash = $1")
            .bind(&hash)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((hash, left)))
    }
}
