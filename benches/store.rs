//! Store benchmark: a page of 50 jobs out of 100,000, as `GET /api/jobs` reads it.
//! `cargo bench --bench store` (set `STORE_JOBS` for another count). Prints times.

use std::time::{Duration, Instant};

use orchestrator::model::JobStatus;
use orchestrator::store::{JobChange, NewJob, Store};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let count: usize = std::env::var("STORE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ))
    .await
    .expect("store");
    let params = serde_json::json!({ "prompt": "a lighthouse at dusk", "steps": 30, "seed": 42 });
    let workflow =
        serde_json::json!({ "3": { "class_type": "KSampler", "inputs": { "seed": 42 } } });
    let started = Instant::now();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let new = NewJob {
            backend: orchestrator::model::Backend::Comfy,
            template: Some("sdxl-t2i"),
            params: &params,
            workflow: &workflow,
            backend_url: None,
        };
        let id = store.insert_job(new).await.expect("insert").id;
        if i % 10 == 0 {
            let done = JobChange {
                status: Some(JobStatus::Succeeded),
                finished: true,
                ..Default::default()
            };
            store.update_job(&id, done).await.expect("update");
        }
        ids.push(id);
    }
    println!(
        "store: {count} jobs written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let middle_cursor = {
        let mut cursor = None;
        for _ in 0..(count / 2 / 500) {
            cursor = store
                .list_jobs(None, 500, cursor.as_deref())
                .await
                .expect("page")
                .next_cursor;
        }
        cursor
    };
    let cases: [(&str, Option<JobStatus>, Option<String>); 3] = [
        ("first page", None, None),
        ("a page halfway down (keyset cursor)", None, middle_cursor),
        (
            "first page of status=succeeded",
            Some(JobStatus::Succeeded),
            None,
        ),
    ];
    for (label, status, cursor) in cases {
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..50 {
            let started = Instant::now();
            let page = store
                .list_jobs(status, 50, cursor.as_deref())
                .await
                .expect("page");
            times.push(started.elapsed());
            assert_eq!(page.jobs.len(), 50);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "store: {label}: 50 of {count} jobs: median {:.3} ms, p95 {:.3} ms, max {:.3} ms",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 95 / 100]),
            ms(times[times.len() - 1])
        );
    }
}
