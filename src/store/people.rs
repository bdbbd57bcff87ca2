//! People: the studio's accounts (`migrations/*/…people.sql`), looked up by their name whatever its case.

use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::now;
use crate::model::{Person, Role};

/// What a change of a person came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    Done,
    /// No person of that name.
    NoSuchPerson,
}

/// A person's columns, as [`person_of`] reads them, then `$tail`: one literal statement.
macro_rules! select_people {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, role, disabled_at, created_at, \
             CAST(CASE WHEN password_hash IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_password FROM people ",
            $tail
        )
    };
}

impl Store {
    /// Adds a person; `None` when the name is taken (in any case).
    pub async fn add_person(
        &self,
        name: &str,
        role: Role,
        password_hash: Option<&str>,
    ) -> Result<Option<Person>, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let at = now();
        let inserted = sqlx::query(
            "INSERT INTO people (id, name, name_key, role, password_hash, created_at, credentials_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (name_key) DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(name_key(name))
        .bind(role.as_str())
        .bind(password_hash)
        .bind(&at)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(None);
        }
        self.person(name).await
    }

    /// A person by name, whatever its case.
    pub async fn person(&self, name: &str) -> Result<Option<Person>, StoreError> {
        let row = sqlx::query(select_people!("WHERE name_key = $1"))
            .bind(name_key(name))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| person_of(&row)).transpose()
    }

    /// Everyone, by name.
    pub async fn people(&self) -> Result<Vec<Person>, StoreError> {
        let rows = sqlx::query(select_people!("ORDER BY name_key"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(person_of).collect()
    }

    /// A person's password hash, for a sign-in (`None`: no such person, or none set).
    pub async fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT password_hash FROM people WHERE name_key = $1")
                .bind(name_key(name))
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(hash,)| hash))
    }

    pub async fn set_role(&self, name: &str, role: Role) -> Result<Changed, StoreError> {
        let sql = "UPDATE people SET role = $2, credentials_at = $3 WHERE name_key = $1";
        self.change_person(sql, name, Some(role.as_str())).await
    }

    pub async fn set_password_hash(&self, name: &str, hash: &str) -> Result<Changed, StoreError> {
        let sql = "UPDATE people SET password_hash = $2, credentials_at = $3 WHERE name_key = $1";
        self.change_person(sql, name, Some(hash)).await
    }

    /// Disables a person (`disabled`), or enables them again.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<Changed, StoreError> {
        let sql = if disabled {
            "UPDATE people SET disabled_at = COALESCE(disabled_at, $2), credentials_at = $2 WHERE name_key = $1"
        } else {
            "UPDATE people SET disabled_at = NULL, credentials_at = $2 WHERE name_key = $1"
        };
        self.change_person(sql, name, None).await
    }

    /// One change of a person's row (`$1` the name's key, `$2` the value if any, then the time), which also ends
    /// what their old credentials opened (`credentials_at`).
    async fn change_person(
        &self,
        sql: &'static str,
        name: &str,
        value: Option<&str>,
    ) -> Result<Changed, StoreError> {
        let mut query = sqlx::query(sql).bind(name_key(name));
        if let Some(value) = value {
            query = query.bind(value);
        }
        let changed = query.bind(now()).execute(&self.pool).await?;
        Ok(if changed.rows_affected() == 0 {
            Changed::NoSuchPerson
        } else {
            Changed::Done
        })
    }
}

/// A name as it is looked up: unique whatever its case.
fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

fn person_of(row: &sqlx::any::AnyRow) -> Result<Person, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(Person {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or(StoreError::Gone("a person's role"))?,
        disabled_at: row.try_get("disabled_at")?,
        created_at: row.try_get("created_at")?,
        has_password: row.try_get::<i64, _>("has_password")? == 1,
    })
}
