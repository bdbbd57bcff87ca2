//! The gallery's query: jobs with outputs, newest first, a keyset page at a time, filtered by template, backend,
//! status and creation time, and searched in their prompt text (SQLite's FTS5 table or PostgreSQL's GIN index).

use super::jobs::{JobPage, after, page};
use super::{Engine, Store, StoreError};
use crate::model::JobStatus;

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
        let after = after(query.cursor.as_deref());
        // The cursor's comparison only when there is one: inside an `OR` it would keep SQLite from seeking in the
        // (created_at, id) index, and each later page would cost more than the one before.
        let keyset = match after {
            Some(_) => "AND (created_at, id) < ($8, $9)",
            None => "",
        };
        let sql = format!(
            "SELECT {} FROM jobs WHERE outputs <> '[]' \
             AND (CAST($1 AS TEXT) IS NULL OR template = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR backend = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR status = $3) \
             AND (CAST($4 AS TEXT) IS NULL OR created_at >= $4) \
             AND (CAST($5 AS TEXT) IS NULL OR created_at < $5) \
             AND (CAST($6 AS TEXT) IS NULL OR {search}) {keyset} \
             ORDER BY created_at DESC, id DESC LIMIT $7",
            job_columns!()
        );
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.template.as_deref())
            .bind(query.backend.as_deref())
            .bind(query.status.map(JobStatus::as_str))
            .bind(query.since.as_deref())
            .bind(query.until.as_deref())
            .bind(text)
            .bind(i64::from(query.limit) + 1);
        if let Some((time, id)) = after {
            statement = statement.bind(time).bind(id);
        }
        let rows = statement.fetch_all(&self.pool).await?;
        Ok(page(&rows, query.limit))
    }
}

/// Which jobs a list keeps, newest first: those of any of `statuses` (every one when `None`) and, for each label,
/// the labelled jobs (raw workflows, whose `params.metadata` holds the v2 API's labels) that carry it.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub statuses: Option<Vec<JobStatus>>,
    /// `(key, value)`: keys are the v2 contract's (`A-Z a-z 0-9 _ - .`), at most a few.
    pub labels: Vec<(String, String)>,
}

impl Store {
    /// A page of the jobs `filter` keeps: the store filters, so a page is whole however selective the filter.
    pub async fn list_filtered(
        &self,
        filter: &JobFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<JobPage, StoreError> {
        let mut conditions = Vec::new();
        let mut next = 1;
        let mut placeholder = || {
            let p = format!("${next}");
            next += 1;
            p
        };
        let after = after(cursor);
        if after.is_some() {
            conditions.push(format!(
                "(created_at, id) < ({}, {})",
                placeholder(),
                placeholder()
            ));
        }
        let statuses: Vec<&str> = filter
            .statuses
            .iter()
            .flatten()
            .map(|s| s.as_str())
            .collect();
        if filter.statuses.is_some() {
            let list: Vec<String> = statuses.iter().map(|_| placeholder()).collect();
            conditions.push(match list.is_empty() {
                true => "1 = 0".to_owned(),
                false => format!("status IN ({})", list.join(", ")),
            });
        }
        if !filter.labels.is_empty() {
            conditions.push("template IS NULL".to_owned());
        }
        for _ in &filter.labels {
            let (key, value) = (placeholder(), placeholder());
            conditions.push(match self.engine {
                Engine::Sqlite => format!(
                    "json_extract(params, '$.metadata.' || json_quote(CAST({key} AS TEXT))) = {value}"
                ),
                Engine::Postgres => {
                    format!("(params::jsonb -> 'metadata' ->> CAST({key} AS TEXT)) = {value}")
                }
            });
        }
        let limit_at = placeholder();
        let filters = match conditions.is_empty() {
            true => String::new(),
            false => format!("WHERE {}", conditions.join(" AND ")),
        };
        let sql = format!(
            "SELECT {} FROM jobs {filters} ORDER BY created_at DESC, id DESC LIMIT {limit_at}",
            job_columns!()
        );
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some((time, id)) = after {
            statement = statement.bind(time).bind(id);
        }
        for status in statuses {
            statement = statement.bind(status);
        }
        for (key, value) in &filter.labels {
            statement = statement.bind(key.as_str()).bind(value.as_str());
        }
        let rows = statement
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(page(&rows, limit))
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
