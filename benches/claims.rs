//! Fleet claim benchmark: how many jobs of the fleet's queue are claimed per second, by 1 and by 3 instances taking
//! from one PostgreSQL queue at once (`FOR UPDATE SKIP LOCKED`), each claiming one job at a time as its dispatcher
//! does. Needs the test cluster (`TEST_DATABASE_URL`; `source scripts/postgres.sh && start_test_postgres` starts
//! one). `cargo bench --bench claims` (`CLAIM_JOBS` for another count than 5,000). Prints the rates.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use orchestrator::store::{NewJob, Store};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let count: usize = std::env::var("CLAIM_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    if testkit::postgres::cluster().is_none() {
        eprintln!(
            "{} is not set: start the test cluster first (source scripts/postgres.sh && start_test_postgres)",
            testkit::postgres::VARIABLE
        );
        std::process::exit(2);
    }
    println!("jobs claimed from one queue of {count} (PostgreSQL, this machine)");
    for instances in [1, 3] {
        let (elapsed, claimed) = claim_all(count, instances).await;
        println!(
            "  {instances} instance(s): {count} jobs in {:.2} s, {:.0} claims/s; each job claimed once: {}",
            elapsed.as_secs_f64(),
            count as f64 / elapsed.as_secs_f64(),
            if claimed == count { "yes" } else { "NO" }
        );
    }
}

/// Fills a fresh queue with `count` jobs, then lets `instances` stores (each a pool of its own, as separate
/// processes have) claim until it is empty. Answers the time it took and how many distinct jobs were claimed.
async fn claim_all(count: usize, instances: usize) -> (Duration, usize) {
    let url = testkit::postgres::fresh_database()
        .await
        .expect("a database on the test cluster");
    let seed = Store::open(&url).await.expect("store");
    let params = serde_json::json!({ "prompt": "a lighthouse at dusk" });
    let workflow = serde_json::json!({ "1": { "class_type": "EmptyLatentImage", "inputs": {} } });
    for _ in 0..count {
        let new = NewJob {
            backend: orchestrator::model::Backend::Comfy,
            template: None,
            params: &params,
            workflow: &workflow,
            backend_url: None,
        };
        seed.insert_job(new).await.expect("a queued job");
    }
    let mut stores = Vec::new();
    for i in 0..instances {
        let store = Store::open(&url)
            .await
            .expect("store")
            .for_instance(&format!("bench-{i}"), Duration::from_secs(30));
        stores.push(store);
    }
    let started = Instant::now();
    let claimers = stores.into_iter().enumerate().map(|(i, store)| {
        tokio::spawn(async move {
            let instance = format!("bench-{i}");
            let mut ids = Vec::new();
            loop {
                let until = orchestrator::store::lease_until(Duration::from_secs(30));
                match store
                    .claim_next(&instance, "http://127.0.0.1:8188", &until)
                    .await
                    .expect("a claim")
                {
                    Some(job) => ids.push(job.id),
                    None => return ids,
                }
            }
        })
    });
    let claimed = futures_util::future::join_all(claimers).await;
    let elapsed = started.elapsed();
    let all: Vec<String> = claimed.into_iter().flat_map(|ids| ids.unwrap()).collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "no job claimed twice");
    (elapsed, distinct.len())
}
