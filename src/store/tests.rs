use super::*;
use crate::model::{Backend, JobStatus};
use crate::store::Record;

#[tokio::test]
async fn first_run_creates_a_wal_file_with_the_schema_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orchestrator.db");
    let url = format!("sqlite://{}", file.display());

    let store = Store::open(&url).await.expect("created");
    assert!(file.exists());
    assert_eq!(store.journal_mode().await.unwrap().as_deref(), Some("wal"));
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

/// A store on each engine: a SQLite file and, when the test command started a PostgreSQL cluster, a fresh
/// database there. The folder holds the SQLite file.
/// A new job's reservation at `cost_micros` on `day` (in a $5 budget), paid by `token_id`, under no key.
fn reserving<'a>(
    job: NewJob<'a>,
    cost_micros: i64,
    day: &'a str,
    token_id: &'a str,
) -> PaidJob<'a> {
    PaidJob {
        record: Record::New {
            job,
            approval: None,
        },
        cost_micros,
        day,
        budget_micros: 5_000_000,
        idempotency: None,
        token_id,
    }
}

async fn each_engine() -> (tempfile::TempDir, Vec<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut stores = vec![Store::open(&sqlite).await.unwrap()];
    match testkit::postgres::fresh_database().await {
        Some(url) => stores.push(
            Store::open(&url)
                .await
                .expect("the store opens on PostgreSQL"),
        ),
        None => eprintln!(
            "{} is not set: PostgreSQL not tested",
            testkit::postgres::VARIABLE
        ),
    }
    (dir, stores)
}

#[tokio::test]
async fn both_engines_migrate_to_the_same_schema_and_reopen() {
    let (_dir, stores) = each_engine().await;
    let sqlite = &stores[0];
    for store in &stores {
        assert_eq!(
            store.schema_columns().await.unwrap(),
            sqlite.schema_columns().await.unwrap(),
            "{:?} has the columns SQLite has",
            store.engine()
        );
        assert_eq!(
            store.schema_objects().await.unwrap(),
            sqlite.schema_objects().await.unwrap(),
            "{:?} has the tables and indexes SQLite has",
            store.engine()
        );
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
    }
    let columns = sqlite.schema_columns().await.unwrap();
    assert!(
        columns.contains(&"jobs.progress real not null".to_owned()),
        "{columns:?}"
    );
    assert!(
        columns.contains(&"job_events.seq integer not null".to_owned()),
        "{columns:?}"
    );
}

#[tokio::test]
async fn jobs_page_newest_first_with_a_cursor_and_a_status_filter() {
    let (_dir, stores) = each_engine().await;
    for store in stores {
        jobs_page(store).await;
    }
}

async fn jobs_page(store: Store) {
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
    // The four still queued, with no backend, are the fleet's queue: the dispatcher's to send, not a restart's to
    // reconcile.
    assert!(store.unfinished_jobs().await.unwrap().is_empty());
    assert!(store.has_claimable().await.unwrap());
}

#[tokio::test]
async fn progress_is_recorded_after_changes_that_carry_none() {
    let (_dir, stores) = each_engine().await;
    for store in stores {
        let params = serde_json::json!({});
        let new = NewJob {
            backend: Backend::Comfy,
            template: None,
            params: &params,
            workflow: &params,
            backend_url: None,
        };
        let id = store.insert_job(new).await.unwrap().id;
        // A change without progress first (the statement is prepared then), progress after it, on each connection.
        for step in 1..=20 {
            let running = JobChange {
                status: Some(JobStatus::Running),
                ..Default::default()
            };
            assert!(store.update_job(&id, running).await.unwrap());
            let progress = JobChange {
                progress: Some(f64::from(step) / 20.0),
                ..Default::default()
            };
            assert!(store.update_job(&id, progress).await.unwrap());
        }
        let job = store.job(&id).await.unwrap().unwrap();
        assert_eq!((job.status, job.progress), (JobStatus::Running, 1.0));
    }
}

#[tokio::test]
async fn a_deleted_job_is_gone_but_a_paid_ones_charge_stays() {
    let (_dir, stores) = each_engine().await;
    for store in stores {
        let params = serde_json::json!({ "prompt": "a boat" });
        let workflow = serde_json::json!({});
        let new = || NewJob {
            backend: Backend::Comfy,
            template: None,
            params: &params,
            workflow: &workflow,
            backend_url: None,
        };
        let ended = JobChange {
            status: Some(JobStatus::Succeeded),
            finished: true,
            ..Default::default()
        };
        let free = store.insert_job(new()).await.unwrap();
        assert_eq!(
            store.delete_job(&free.id, "local").await.unwrap(),
            Deleted::Running(JobStatus::Queued)
        );
        store.update_job(&free.id, ended).await.unwrap();
        assert_eq!(
            store.delete_job(&free.id, "local").await.unwrap(),
            Deleted::Removed
        );
        assert!(store.job(&free.id).await.unwrap().is_none());
        assert_eq!(store.last_job_event(&free.id).await.unwrap(), 0);
        assert_eq!(
            store.delete_job(&free.id, "local").await.unwrap(),
            Deleted::NotFound
        );

        let day = "2026-12-04";
        let Reservation::Reserved(paid) = store
            .reserve_paid_job(reserving(new(), 40_000, day, "token"))
            .await
            .unwrap()
        else {
            panic!("reserved");
        };
        let ended = JobChange {
            status: Some(JobStatus::Succeeded),
            finished: true,
            ..Default::default()
        };
        store.update_job(&paid.id, ended).await.unwrap();
        let before = store.budget_usage(day).await.unwrap();
        assert_eq!(
            store.delete_job(&paid.id, "local").await.unwrap(),
            Deleted::OutputsForgotten
        );
        let after = store.budget_usage(day).await.unwrap();
        assert_eq!(
            (after.spent, after.reserved),
            (before.spent, before.reserved),
            "the charge still counts"
        );
        assert!(
            store
                .job(&paid.id)
                .await
                .unwrap()
                .unwrap()
                .outputs
                .is_empty()
        );
    }
}

/// A used confirmation token's record is kept until every token it could be has expired (`used_before`), not for
/// the keys' own window: pruned early, a token still valid would pay a second time.
#[tokio::test]
async fn a_used_token_is_remembered_until_its_own_cutoff() {
    let (_dir, stores) = each_engine().await;
    for store in stores {
        let params = serde_json::json!({ "prompt": "a kite" });
        let workflow = serde_json::json!({});
        let reserve = |token: &'static str| {
            let store = store.clone();
            let (params, workflow) = (params.clone(), workflow.clone());
            async move {
                store
                    .reserve_paid_job(reserving(
                        NewJob {
                            backend: Backend::Comfy,
                            template: None,
                            params: &params,
                            workflow: &workflow,
                            backend_url: None,
                        },
                        10_000,
                        "2026-12-07",
                        token,
                    ))
                    .await
                    .unwrap()
            }
        };
        assert!(matches!(reserve("t1").await, Reservation::Reserved(_)));
        let past = "2000-01-01T00:00:00.000000Z";
        let future = "2999-01-01T00:00:00.000000Z";
        // Every key is past its window; the token's record is not past its own cutoff.
        store.prune_idempotency_keys(future, past).await.unwrap();
        assert!(matches!(reserve("t1").await, Reservation::TokenUsed));
        store.prune_idempotency_keys(future, future).await.unwrap();
        assert!(matches!(reserve("t1").await, Reservation::Reserved(_)));
    }
}

/// A job deleted through one instance whose files another keeps leaves word for that one (its holder), in the
/// delete's own transaction; the deleting instance's own jobs leave none.
#[tokio::test]
async fn a_job_deleted_elsewhere_tells_the_instance_that_keeps_its_files() {
    let (_dir, stores) = each_engine().await;
    for store in stores {
        let params = serde_json::json!({});
        let workflow = serde_json::json!({});
        let new = || NewJob {
            backend: Backend::Comfy,
            template: None,
            params: &params,
            workflow: &workflow,
            backend_url: None,
        };
        let ended = || JobChange {
            status: Some(JobStatus::Succeeded),
            finished: true,
            ..Default::default()
        };
        let until = "2999-01-01T00:00:00.000000Z";
        let theirs = store.insert_job(new()).await.unwrap().id;
        let mine = store.insert_job(new()).await.unwrap().id;
        store.force_claim(&theirs, "b", until).await.unwrap();
        store.force_claim(&mine, "a", until).await.unwrap();
        for id in [&theirs, &mine] {
            store.update_job(id, ended()).await.unwrap();
            assert_eq!(store.delete_job(id, "a").await.unwrap(), Deleted::Removed);
        }
        if store.engine() == crate::config::Engine::Sqlite {
            // One instance: nothing to tell anyone.
            assert!(store.deleted_outputs("b", 10).await.unwrap().is_empty());
            continue;
        }
        assert_eq!(
            store.deleted_outputs("b", 10).await.unwrap(),
            std::slice::from_ref(&theirs)
        );
        assert!(store.deleted_outputs("a", 10).await.unwrap().is_empty());
        store.forget_deleted_outputs(&theirs).await.unwrap();
        assert!(store.deleted_outputs("b", 10).await.unwrap().is_empty());
    }
}

/// A claim renewed while its request works is younger than its first claim; a key with an answer is not touched.
#[tokio::test]
async fn a_claim_is_renewed_until_it_has_an_answer() {
    let (_dir, stores) = each_engine().await;
    for store in stores {
        let long_ago = "2000-01-01T00:00:00Z";
        let claimed_at = |key: &'static str| {
            let store = store.clone();
            async move {
                let record = store
                    .idempotency_record("v2.jobs", key, long_ago)
                    .await
                    .unwrap();
                record.unwrap().claimed_at
            }
        };
        for key in ["working", "answered"] {
            assert!(
                store
                    .claim_idempotency_key("v2.jobs", key, "f")
                    .await
                    .unwrap()
            );
        }
        store
            .record_idempotent_response("v2.jobs", "answered", 201, &serde_json::json!({"id": "j"}))
            .await
            .unwrap();
        let (working, answered) = (claimed_at("working").await, claimed_at("answered").await);
        let later = |before: &str| {
            let before = before.to_owned();
            move |now: String| now > before
        };
        let renewed = later(&working);
        loop {
            store
                .renew_idempotency_claim("v2.jobs", "working")
                .await
                .unwrap();
            store
                .renew_idempotency_claim("v2.jobs", "answered")
                .await
                .unwrap();
            if renewed(claimed_at("working").await) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            claimed_at("answered").await,
            answered,
            "an answered key keeps its time"
        );
    }
}

#[tokio::test]
async fn a_filtered_list_is_the_stores_own_whole_pages_of_the_jobs_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("o.db").display()))
        .await
        .unwrap();
    let workflow = serde_json::json!({});
    let labelled = |n: u32| serde_json::json!({ "metadata": { "run.id": format!("r{}", n % 2) } });
    let mut ids = Vec::new();
    for n in 0..6 {
        let params = labelled(n);
        let new = NewJob {
            backend: Backend::Comfy,
            template: None,
            params: &params,
            workflow: &workflow,
            backend_url: None,
        };
        ids.push(store.insert_job(new).await.unwrap().id);
    }
    // A template's job with the same parameters carries no labels.
    let params = labelled(0);
    let templated = NewJob {
        backend: Backend::Comfy,
        template: Some("sdxl-t2i"),
        params: &params,
        workflow: &workflow,
        backend_url: None,
    };
    store.insert_job(templated).await.unwrap();
    let change = JobChange {
        status: Some(JobStatus::Failed),
        ..Default::default()
    };
    store.update_job(&ids[0], change).await.unwrap();

    let label = JobFilter {
        statuses: None,
        labels: vec![("run.id".into(), "r0".into())],
    };
    let first = store.list_filtered(&label, 2, None).await.unwrap();
    let rest = store
        .list_filtered(&label, 2, first.next_cursor.as_deref())
        .await
        .unwrap();
    let found: Vec<&str> = first
        .jobs
        .iter()
        .chain(&rest.jobs)
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(
        found,
        [&ids[4], &ids[2], &ids[0]],
        "newest first, labelled r0, no template's job"
    );
    assert_eq!(rest.next_cursor, None);

    let failed_or_lost = JobFilter {
        statuses: Some(vec![JobStatus::Failed, JobStatus::BackendLost]),
        labels: Vec::new(),
    };
    let page = store
        .list_filtered(&failed_or_lost, 10, None)
        .await
        .unwrap();
    assert_eq!(
        page.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [&ids[0]]
    );
    let none = JobFilter {
        statuses: Some(Vec::new()),
        labels: Vec::new(),
    };
    assert!(
        store
            .list_filtered(&none, 10, None)
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
}

/// A reservation binds only its own request's claim: a key claimed meanwhile by a request with another body is not
/// bound to this job (that request's repeats would get a job made from another body), and nothing is reserved.
#[tokio::test]
async fn a_reservation_binds_only_a_claim_of_its_own_body() {
    let (_dir, stores) = each_engine().await;
    for store in stores {
        assert!(
            store
                .claim_idempotency_key("s", "k", "theirs")
                .await
                .unwrap()
        );
        let (params, workflow) = (serde_json::json!({}), serde_json::json!({}));
        let paid = |fingerprint| {
            let job = NewJob {
                backend: Backend::Flux,
                template: None,
                params: &params,
                workflow: &workflow,
                backend_url: None,
            };
            let claim = IdempotencyClaim {
                scope: "s",
                key: "k",
                fingerprint,
            };
            PaidJob {
                idempotency: Some(claim),
                ..reserving(job, 10_000, "2026-12-07", fingerprint)
            }
        };
        let lost = store.reserve_paid_job(paid("mine")).await.unwrap();
        assert!(matches!(lost, Reservation::KeyLost));
        assert_eq!(store.budget_usage("2026-12-07").await.unwrap().reserved, 0);
        let bound = store.reserve_paid_job(paid("theirs")).await.unwrap();
        let Reservation::Reserved(job) = bound else {
            panic!("the claim's own request reserves");
        };
        let far = "2000-01-01T00:00:00Z";
        let record = store.idempotency_record("s", "k", far).await.unwrap();
        assert_eq!(record.unwrap().job_id, Some(job.id));
    }
}
