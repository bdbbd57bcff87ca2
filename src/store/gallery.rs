//! The gallery's query: jobs with outputs, newest first, a keyset page at a time, filtered by template, backend,
//! status and creation time, and searched in their prompt text (SQLite's FTS5 table or PostgreSQL's GIN index).

use super::jobs::{JobPage, job_from_row};
use super::{Engine, Store, StoreError};
use crate::jobs::model::JobStatus;

/// What the gallery shows; every filter is optional.
#[derive(Debug, Default, Clone)]
pub struct GalleryQuery {
    pub template: Option<String>,
    pub backend: Option<String>,
    pub status: Option<JobStatus>,
    /// Created at or after (RFC 3339 or a date, as the jobs' `created_at` sorts).
    pub since: Option<String>,
    /// Created before.
    pub until: Option<String>,
    /// Words the prompt must contain (each a prefix: `light` finds "lighthouse").
    pub text: Option<String>,
    /// `created_at~id` of the last job of the previous page.
    pub cursor: Option<String>,
    pub limit: u32,
}

/// `words` as an FTS5 query: each a quoted prefix, all required; `None` when no word is left.
fn fts5_query(words: &str) -> Option<String> {
    let terms: Vec<String> = words
        .split_whitespace()
        .map(|word| word.replace('"', ""))
        .filter(|word| !word.is_empty())
        .map(|word| format!("\"{word}\"*"))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// `words` as a PostgreSQL `to_tsquery`: each a prefix, all required.
fn tsquery(words: &str) -> Option<String> {
    let terms: Vec<String> = words
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| format!("{}:*", word.to_lowercase()))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" & "))
}

impl Store {
    pub async fn gallery(&self, query: &GalleryQuery) -> Result<JobPage, StoreError> {
        let (after_time, after_id) = match query.cursor.as_deref().and_then(|c| c.split_once('~')) {
            Some((time, id)) => (Some(time.to_owned()), Some(id.to_owned())),
            None => (None, None),
        };
        let search = match self.engine {
            Engine::Sqlite => {
                "rowid IN (SELECT rowid FROM search_jobs WHERE search_jobs MATCH CAST($6 AS TEXT))"
            }
            Engine::Postgres => {
                "to_tsvector('simple', COALESCE(prompt_text, '')) @@ to_tsquery('simple', CAST($6 AS TEXT))"
            }
        };
        let text = query.text.as_deref().and_then(match self.engine {
            Engine::Sqlite => fts5_query,
            Engine::Postgres => tsquery,
        });
        let sql = format!(
            "SELECT {} FROM jobs WHERE outputs <> '[]' \
             AND (CAST($1 AS TEXT) IS NULL OR template = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR backend = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR status = $3) \
             AND (CAST($4 AS TEXT) IS NULL OR created_at >= $4) \
             AND (CAST($5 AS TEXT) IS NULL OR created_at < $5) \
             AND (CAST($6 AS TEXT) IS NULL OR {search}) \
             AND (CAST($7 AS TEXT) IS NULL OR (created_at, id) < ($7, $8)) \
             ORDER BY created_at DESC, id DESC LIMIT $9",
            job_columns!()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.template.as_deref())
            .bind(query.backend.as_deref())
            .bind(query.status.map(JobStatus::as_str))
            .bind(query.since.as_deref())
            .bind(query.until.as_deref())
            .bind(text)
            .bind(after_time)
            .bind(after_id)
            .bind(i64::from(query.limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut jobs: Vec<_> = rows.iter().map(job_from_row).collect();
        let next_cursor = if jobs.len() > query.limit as usize {
            jobs.truncate(query.limit as usize);
            jobs.last()
                .map(|job| format!("{}~{}", job.created_at, job.id))
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_become_prefix_queries_and_quotes_cannot_break_out() {
        assert_eq!(
            fts5_query("light house").as_deref(),
            Some("\"light\"* \"house\"*")
        );
        assert_eq!(fts5_query("a\"OR\"b").as_deref(), Some("\"aORb\"*"));
        assert_eq!(fts5_query("  "), None);
        assert_eq!(
            tsquery("Light-house's").as_deref(),
            Some("light:* & house:* & s:*")
        );
        assert_eq!(tsquery("&|!"), None);
    }
}
