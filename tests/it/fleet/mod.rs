//! A fleet: three Orchestrator processes on one PostgreSQL database, in front of two fake ComfyUI backends. Each
//! instance reaches both backends; they share one queue, one history and one budget.

mod instances;
mod jobs;
mod paid;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use crate::support::served::Served;
use crate::support::{client, post_to, wait_until};

/// How long a claim lasts in these tests: a killed instance's jobs are taken over within this and a heartbeat.
const LEASE_SECS: u64 = 3;

struct Fleet {
    database: String,
    members: Vec<Served>,
    _dirs: Vec<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Fleet {
    /// `n` instances (`a`, `b`, `c`, …) on a fresh database of the test cluster, each with every backend of
    /// `backends`; `None` when the test command started no cluster.
    fn start(n: usize, backends: &[&FakeComfy], extra: &[(&str, &str)]) -> Option<Self> {
        let Some(database) = testkit::postgres::fresh_database_blocking() else {
            eprintln!(
                "{} is not set: the fleet is not tested",
                testkit::postgres::VARIABLE
            );
            return None;
        };
        let comfy = backends
            .iter()
            .map(|b| b.url())
            .collect::<Vec<_>>()
            .join(",");
        let lease = LEASE_SECS.to_string();
        let mut members = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let name = ((b'a' + i as u8) as char).to_string();
            let mut env = vec![
                ("DATABASE_URL", database.as_str()),
                ("ORCH_INSTANCE_ID", name.as_str()),
                ("FLEET_LEASE_SECS", lease.as_str()),
            ];
            env.extend_from_slice(extra);
            members.push(Served::start_with(dir.path(), &comfy, &env));
            dirs.push(dir);
        }
        Some(Self {
            database,
            members,
            _dirs: dirs,
            http: client(),
        })
    }

    fn url(&self, i: usize, path: &str) -> String {
        self.members[i].url(path)
    }

    async fn get(&self, i: usize, path: &str) -> Value {
        let response = self.http.get(self.url(i, path)).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn post(&self, i: usize, path: &str, body: &Value) -> (u16, Value) {
        let posted = post_to(&self.http, self.url(i, path), Some(body), None).await;
        (posted.status, posted.body)
    }

    /// Submits a workflow to instance `i`; answers the job's id.
    async fn submit(&self, i: usize, workflow: &Value) -> String {
        let (status, job) = self
            .post(i, "/api/jobs", &json!({ "workflow": workflow }))
            .await;
        assert!(status < 300, "{status}: {job}");
        job["id"].as_str().expect("a job id").to_owned()
    }

    /// Waits until every job of `ids` is `status`, asking instance `i`.
    async fn wait_all(&self, i: usize, ids: &[String], status: &str, within: Duration) {
        for id in ids {
            let path = format!("/api/jobs/{id}");
            wait_until(within, &format!("job {id} is {status}"), || async {
                let job = self.get(i, &path).await;
                assert!(
                    job["status"] == status || !is_final(&job),
                    "job {id} ended otherwise: {job}"
                );
                job["status"] == status
            })
            .await;
        }
    }
}

fn is_final(job: &Value) -> bool {
    ["succeeded", "failed", "cancelled", "backend_lost"]
        .contains(&job["status"].as_str().unwrap_or(""))
}

/// How many times each job was posted to ComfyUI, across `backends`.
fn sent(backends: &[&FakeComfy]) -> HashMap<String, usize> {
    let mut sent = HashMap::new();
    for backend in backends {
        for prompt in backend.received_prompts() {
            let job = prompt["extra_data"]["orchestrator_job"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *sent.entry(job).or_default() += 1;
        }
    }
    sent
}
