//! Throwaway PostgreSQL databases, on the cluster the test command starts (`scripts/postgres.sh`: Debian's
//! `initdb` and `pg_ctl` in a temporary folder, on a free port) and names in `TEST_DATABASE_URL`.

use sqlx::Connection;

/// The variable that holds the test cluster's URL (its `postgres` database, as a superuser).
pub const VARIABLE: &str = "TEST_DATABASE_URL";

/// The test cluster's URL, when the test command started one.
pub fn cluster() -> Option<String> {
    std::env::var(VARIABLE)
        .ok()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
}

/// A new, empty database on the test cluster, for one test; answers its URL (`None` without a cluster). Each
/// test gets its own, so tests run in parallel without seeing each other's rows; the cluster goes when the test
/// command ends.
pub async fn fresh_database() -> Option<String> {
    let admin = cluster()?;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("the test cluster at {VARIABLE} answers: {e}"));
    // The name is made here, of hex digits: nothing to quote.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("a database for the test is created");
    let _ = connection.close().await;
    let (server, _) = admin
        .split('?')
        .next()
        .unwrap_or_default()
        .rsplit_once('/')
        .expect("the cluster URL names a database");
    Some(format!("{server}/{name}"))
}

/// [`fresh_database`] for code that is not async (test set-up that starts a child process, or settings made
/// before a runtime exists): it runs on a thread of its own with a runtime of its own, so it may be called from
/// inside a test's runtime as well.
pub fn fresh_database_blocking() -> Option<String> {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for making the database")
            .block_on(fresh_database())
    })
    .join()
    .expect("making the test database does not panic")
}
