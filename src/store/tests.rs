use super::*;
use crate::jobs::model::{Backend, JobStatus};

#[tokio::test]
async fn first_run_creates_a_wal_file_with_the_schema_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orchestrator.db");
    let url = format!("sqlite://{}", file.display());

    let store = Store::open(&url).await.expect("created");
    assert!(file.exists());
    assert_eq!(store.journal_mode().await.unwrap(), "wal");
    // Every connection of the pool commits with synchronous=FULL (2), not the WAL default NORMAL (1).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut connection = store.pool.acquire().await.unwrap();
        let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        assert_eq!(level, 2, "synchronous=FULL on every connection");
        held.push(connection);
    }
    drop(held);
    let objects = store.schema_objects().await.unwrap();
    for name in [
        "jobs",
        "messages",
        "jobs_status",
        "jobs_created_at",
        "messages_timestamp",
    ] {
        assert!(
            objects.iter().any(|o| o == name),
            "{name} missing: {objects:?}"
        );
    }
    store.close().await;

    let again = Store::open(&url)
        .await
        .expect("reopened without re-running migrations");
    assert_eq!(again.stats().await.unwrap().jobs, 0);
    assert_eq!(again.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn jobs_page_newest_first_with_a_cursor_and_a_status_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let params = serde_json::json!({});
    let mut ids = Vec::new();
    for _ in 0..5 {
        let new = NewJob {
            backend: Backend::Comfy,
            template: None,
            params: &params,
            workflow: &params,
            backend_url: None,
        };
        ids.push(store.insert_job(new).await.unwrap().id);
    }
    let done = JobChange {
        status: Some(JobStatus::Succeeded),
        finished: true,
        ..Default::default()
    };
    store.update_job(&ids[1], done).await.unwrap();

    let page_ids = |page: &JobPage| page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
    let first = store.list_jobs(None, 2, None).await.unwrap();
    assert_eq!(page_ids(&first), [ids[4].clone(), ids[3].clone()]);
    let second = store
        .list_jobs(None, 2, first.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(page_ids(&second), [ids[2].clone(), ids[1].clone()]);
    let third = store
        .list_jobs(None, 2, second.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!((third.jobs.len(), third.next_cursor), (1, None));

    let succeeded = store
        .list_jobs(Some(JobStatus::Succeeded), 10, None)
        .await
        .unwrap();
    assert_eq!(page_ids(&succeeded), [ids[1].clone()]);
    assert!(succeeded.jobs[0].finished_at.is_some());
    // The four still queued are what a restart would reconcile.
    assert_eq!(store.unfinished_jobs().await.unwrap().len(), 4);
}
