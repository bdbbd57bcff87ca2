//! A fleet: three Orchestrator processes on one PostgreSQL database, in front of two fake ComfyUI backends. Each
//! instance reaches both backends; they share one queue, one history and one budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::FakeComfy;

use crate::support::served::Served;
use crate::support::{client, wait_until};

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
        let response = self
            .http
            .post(self.url(i, path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_jobs_round_robin_all_succeed_each_sent_to_comfyui_once() {
    let (one, two) = (FakeComfy::start().await, FakeComfy::start().await);
    let Some(fleet) = Fleet::start(3, &[&one, &two], &[]) else {
        return;
    };
    let workflow = testkit::fake_comfy::no_model_workflow();
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(fleet.submit(n % 3, &workflow).await);
    }
    fleet
        .wait_all(1, &ids, "succeeded", Duration::from_secs(90))
        .await;
    let sent = sent(&[&one, &two]);
    for id in &ids {
        assert_eq!(sent.get(id), Some(&1), "job {id} was sent once");
    }
    assert_eq!(sent.values().sum::<usize>(), 60);
    // One history: every instance lists all sixty, and each names the others.
    for i in 0..3 {
        let page = fleet.get(i, "/api/jobs?limit=100").await;
        assert_eq!(page["jobs"].as_array().unwrap().len(), 60, "instance {i}");
    }
}

/// Jobs recorded while no ComfyUI answered wait in the fleet's queue; any instance with a backend that answers
/// claims them, and each is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleets_queue_is_drained_by_whichever_instance_reaches_a_backend() {
    let comfy = FakeComfy::start().await;
    comfy.set_hang(true);
    let Some(fleet) = Fleet::start(2, &[&comfy], &[]) else {
        return;
    };
    let workflow = testkit::fake_comfy::no_model_workflow();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(fleet.submit(n % 2, &workflow).await);
    }
    for id in &ids {
        assert_eq!(
            fleet.get(0, &format!("/api/jobs/{id}")).await["status"],
            "queued"
        );
    }
    comfy.set_hang(false);
    fleet
        .wait_all(0, &ids, "succeeded", Duration::from_secs(60))
        .await;
    let sent = sent(&[&comfy]);
    for id in &ids {
        assert_eq!(sent.get(id), Some(&1), "job {id} was sent once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_jobs_all_end_and_none_is_sent_twice() {
    let (one, two) = (FakeComfy::start().await, FakeComfy::start().await);
    for backend in [&one, &two] {
        backend.set_step_delay(Duration::from_millis(60));
    }
    let Some(mut fleet) = Fleet::start(3, &[&one, &two], &[]) else {
        return;
    };
    let workflow = testkit::fake_comfy::no_model_workflow();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(fleet.submit(2, &workflow).await);
    }
    // Instance c follows two running jobs and six waiting in ComfyUI's queues when it is killed.
    wait_until(Duration::from_secs(20), "a job of c's runs", || async {
        let page = fleet.get(0, "/api/jobs?status=running").await;
        !page["jobs"].as_array().unwrap().is_empty()
    })
    .await;
    let running: Vec<String> = fleet.get(0, "/api/jobs?status=running").await["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    fleet.members[2].child.kill().unwrap();
    let killed = Instant::now();
    fleet
        .wait_all(
            0,
            &running,
            "succeeded",
            Duration::from_secs(LEASE_SECS + 10),
        )
        .await;
    assert!(killed.elapsed() < Duration::from_secs(LEASE_SECS + 10));
    fleet
        .wait_all(1, &ids, "succeeded", Duration::from_secs(60))
        .await;
    let sent = sent(&[&one, &two]);
    for id in &ids {
        assert_eq!(sent.get(id), Some(&1), "job {id} was sent once");
    }
    // The outputs were fetched by the instance that took each job over.
    for id in &ids {
        let job = fleet.get(1, &format!("/api/jobs/{id}")).await;
        assert!(!job["outputs"].as_array().unwrap().is_empty(), "{job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_instance_follows_a_job_another_runs_and_resumes_on_a_third() {
    let comfy = FakeComfy::start().await;
    comfy.set_step_delay(Duration::from_millis(100));
    let Some(fleet) = Fleet::start(3, &[&comfy], &[]) else {
        return;
    };
    let id = fleet
        .submit(2, &testkit::fake_comfy::no_model_workflow())
        .await;
    let api = orchestrator::client::ApiClient::for_server(fleet.members[0].addr, None);
    let path = format!("/api/jobs/{id}/events");
    let on_a: Vec<_> = api
        .events(&path, None, Some(Duration::from_secs(60)))
        .await
        .unwrap()
        .collect()
        .await;
    let numbers: Vec<i64> = on_a.iter().map(number).collect();
    assert_eq!(
        on_a.last()
            .and_then(|e| e.json())
            .map(|job| job["status"].clone()),
        Some(json!("succeeded"))
    );
    // After the snapshot, every event in order, none missing, none twice.
    let first = numbers[0];
    let expected: Vec<i64> = (first..first + numbers.len() as i64).collect();
    assert_eq!(numbers, expected, "events on a: {numbers:?}");
    // The snapshot, then live ones: those instance a heard from c through the store.
    assert!(numbers.len() >= 3, "{numbers:?}");

    // Resumed on b from the middle: exactly the rest.
    let middle = numbers[numbers.len() / 2];
    let api_b = orchestrator::client::ApiClient::for_server(fleet.members[1].addr, None);
    let on_b: Vec<_> = api_b
        .events(
            &path,
            Some(&middle.to_string()),
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .collect()
        .await;
    let resumed: Vec<i64> = on_b.iter().map(number).collect();
    assert_eq!(
        resumed,
        numbers[numbers.len() / 2 + 1..].to_vec(),
        "resumed on b after {middle}"
    );
}

/// `n` instances with FLUX on `bfl` (generation allowed) and `extra`; their ComfyUI is a fake no test sends to.
async fn flux_fleet(n: usize, bfl: &FakeBfl, extra: &[(&str, &str)]) -> Option<(FakeComfy, Fleet)> {
    let url = bfl.url();
    let mut env = vec![
        ("ALLOW_GENERATION", "true"),
        ("BFL_API_KEY", BFL_KEY),
        ("BFL_BASE_URL", url.as_str()),
    ];
    env.extend_from_slice(extra);
    let comfy = FakeComfy::start().await;
    let fleet = Fleet::start(n, &[&comfy], &env)?;
    Some((comfy, fleet))
}

fn number(event: &orchestrator::client::Event) -> i64 {
    event
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .expect("a numbered event")
}

const BFL_KEY: &str = "bfl-fleet-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_paid_requests_over_three_instances_spend_the_budget_once() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_pending_polls(1000);
    // $0.20 covers five $0.04 images.
    let Some((_nobody, fleet)) = flux_fleet(
        3,
        &bfl,
        &[
            ("FLUX_DAILY_BUDGET_USD", "0.20"),
            ("FLUX_POLL_INTERVAL_MS", "50"),
            ("PAID_RATE_LIMIT_PER_MIN", "100000"),
            ("PAID_RATE_LIMIT_BURST", "1000"),
        ],
    )
    .await
    else {
        return;
    };
    // Fifty dry runs, each on one instance; each paid on the next one (the fleet shares the token key).
    let mut confirmed = Vec::new();
    for n in 0..50 {
        let (status, dry) = fleet
            .post(
                n % 3,
                "/api/flux/generate",
                &json!({ "prompt": "fifty at once" }),
            )
            .await;
        assert_eq!(status, 200, "{dry}");
        confirmed.push(json!({ "prompt": "fifty at once", "dryRun": false, "confirmToken": dry["confirmToken"] }));
    }
    let paid = confirmed
        .iter()
        .enumerate()
        .map(|(n, body)| fleet.post((n + 1) % 3, "/api/flux/generate", body));
    let answers = futures_util::future::join_all(paid).await;
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    let over = answers
        .iter()
        .filter(|(status, body)| *status == 402 && body["error"]["code"] == "budget_exceeded")
        .count();
    assert_eq!(
        (accepted, over),
        (5, 45),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert_eq!(bfl.submits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_every_instance_is_one_charge() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_pending_polls(1000);
    let Some((_nobody, fleet)) = flux_fleet(3, &bfl, &[("FLUX_POLL_INTERVAL_MS", "50")]).await
    else {
        return;
    };
    let (_, dry) = fleet
        .post(
            0,
            "/api/flux/generate",
            &json!({ "prompt": "double click" }),
        )
        .await;
    let body =
        json!({ "prompt": "double click", "dryRun": false, "confirmToken": dry["confirmToken"] });
    let repeats = (0..9).map(|n| {
        fleet
            .http
            .post(fleet.url(n % 3, "/api/flux/generate"))
            .header("Idempotency-Key", "order-fleet-1")
            .json(&body)
            .send()
    });
    let answers = futures_util::future::join_all(repeats).await;
    let mut ids = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 202);
        let body: Value = answer.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "every repeat names the same job");
    assert_eq!(bfl.submits(), 1);
}

/// An output is kept by the instance that ran the job; any instance serves it, fetching it from that one with the
/// fleet's token, which stands in for the user's token there and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_kept_by_one_instance_downloads_through_every_instance() {
    let comfy = FakeComfy::start().await;
    let token = "a-token-of-the-studio-0123456789";
    let Some(fleet) = Fleet::start(3, &[&comfy], &[("ORCHESTRATOR_TOKEN", token)]) else {
        return;
    };
    let (status, job) = {
        let response = fleet
            .http
            .post(fleet.url(2, "/api/jobs"))
            .bearer_auth(token)
            .json(&json!({ "workflow": testkit::fake_comfy::no_model_workflow() }))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert!(status.is_success(), "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let path = format!("/api/jobs/{id}");
    let job_now = || async {
        let response = fleet
            .http
            .get(fleet.url(0, &path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    };
    wait_until(Duration::from_secs(30), "the job succeeds", || async {
        job_now().await["status"] == "succeeded"
    })
    .await;
    let done = job_now().await;
    let name = done["outputs"][0]["name"]
        .as_str()
        .expect("an output")
        .to_owned();
    let output = format!("/api/jobs/{id}/outputs/{name}");
    let mut bodies = Vec::new();
    for i in 0..3 {
        let response = fleet
            .http
            .get(fleet.url(i, &output))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "instance {i}");
        assert_eq!(
            response.headers()["content-type"],
            done["outputs"][0]["content_type"].as_str().unwrap()
        );
        bodies.push(response.bytes().await.unwrap());
    }
    assert!(!bodies[2].is_empty());
    assert!(
        bodies.iter().all(|b| *b == bodies[2]),
        "the same bytes from every instance"
    );
    // Without the user's token and without the fleet's, nothing.
    let forged = fleet
        .http
        .get(fleet.url(2, &output))
        .header("x-orchestrator-fleet", "not-the-fleet-token")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    // The fleet's own token opens that one route of the panel, and nothing on the editor's origin or the gateway.
    let fleet_token = orchestrator::store::Store::open(&fleet.database)
        .await
        .unwrap()
        .fleet_secret("fleet-token")
        .await
        .unwrap();
    let fetched = fleet
        .http
        .get(fleet.url(2, &output))
        .header("x-orchestrator-fleet", &fleet_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        fetched.status(),
        200,
        "another instance's fetch of an output"
    );
    let editor = fleet.members[0]
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["message"] == "ComfyUI's editor listening on its own origin")
        .and_then(|event| event["addr"].as_str().map(str::to_owned))
        .expect("the editor's address is logged");
    for url in [
        format!("http://{editor}{output}"),
        format!("http://{editor}/system_stats"),
        fleet.url(0, "/api/comfy/system_stats"),
        fleet.url(0, "/api/jobs"),
    ] {
        let response = fleet
            .http
            .get(&url)
            .header("x-orchestrator-fleet", &fleet_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{url}");
    }

    // Deleted through another instance: the files go from the instance that keeps them, not only the record.
    let kept = fleet._dirs[2].path().join(format!("data/outputs/{id}"));
    assert!(kept.is_dir(), "instance c keeps the job's files");
    let deleted = fleet
        .http
        .delete(fleet.url(0, &path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    wait_until(
        Duration::from_secs(LEASE_SECS * 3),
        "the keeper removes the files of a job deleted elsewhere",
        || std::future::ready(!kept.exists()),
    )
    .await;
}

/// A paid FLUX task BFL took is polled by the instance that sent it; when that instance dies, another takes the
/// job over and polls it to its image. Nothing is sent to BFL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flux_task_of_a_killed_instance_is_polled_to_its_end_by_another() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    // Pending for a few polls (they back off by half each time): the task outlives instance b.
    bfl.set_pending_polls(8);
    let Some((_nobody, mut fleet)) = flux_fleet(2, &bfl, &[("FLUX_POLL_INTERVAL_MS", "100")]).await
    else {
        return;
    };
    let (_, dry) = fleet
        .post(
            1,
            "/api/flux/generate",
            &json!({ "prompt": "a lighthouse" }),
        )
        .await;
    let (status, job) = fleet
        .post(
            1,
            "/api/flux/generate",
            &json!({ "prompt": "a lighthouse", "dryRun": false, "confirmToken": dry["confirmToken"] }),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(bfl.submits(), 1);
    fleet.members[1].child.kill().unwrap();
    fleet
        .wait_all(0, &[id], "succeeded", Duration::from_secs(LEASE_SECS + 20))
        .await;
    assert_eq!(bfl.submits(), 1, "the task was not sent again");
}

/// An instance that died between posting a prompt and recording ComfyUI's answer leaves a job with no prompt id:
/// the instance that takes it over finds the prompt in ComfyUI's queue or history under the job's id and follows it,
/// rather than sending it again; a job it never posted is sent, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cut_off_between_its_post_and_the_answer_is_followed_not_resent() {
    let comfy = FakeComfy::start().await;
    let Some(fleet) = Fleet::start(1, &[&comfy], &[]) else {
        return;
    };
    // What a dead instance ("ghost") left: two jobs it claimed on this backend, its leases run out.
    // (Its lease runs out two seconds on: after the first job's prompt is posted below.)
    let ghost = orchestrator::store::Store::open(&fleet.database)
        .await
        .unwrap()
        .for_instance("ghost", Duration::from_secs(2));
    let workflow = testkit::fake_comfy::no_model_workflow();
    let url = comfy.url();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let new = orchestrator::store::NewJob {
            backend: orchestrator::model::Backend::Comfy,
            template: None,
            params: &json!({}),
            workflow: &workflow,
            backend_url: Some(&url),
        };
        ids.push(ghost.insert_job(new).await.unwrap().id);
    }
    ghost.close().await;
    // The first one's prompt reached ComfyUI before the ghost died.
    let posted = client()
        .post(format!("{url}/prompt"))
        .json(&json!({
            "prompt": workflow,
            "prompt_id": uuid::Uuid::new_v4().to_string(),
            "client_id": "orchestrator-ghost",
            "extra_data": { "orchestrator_job": ids[0] },
        }))
        .send()
        .await
        .unwrap();
    assert!(posted.status().is_success());
    fleet
        .wait_all(0, &ids, "succeeded", Duration::from_secs(LEASE_SECS + 20))
        .await;
    let sent = sent(&[&comfy]);
    for id in &ids {
        assert_eq!(
            sent.get(id),
            Some(&1),
            "job {id} of {ids:?} reached ComfyUI once"
        );
    }
}

/// Under one `Idempotency-Key`, a request with another body is refused on every instance, the first one's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_with_two_bodies_is_refused_on_another_instance() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_pending_polls(1000);
    let Some((_nobody, fleet)) = flux_fleet(2, &bfl, &[]).await else {
        return;
    };
    let mut bodies = Vec::new();
    for (i, prompt) in ["one body", "another body"].iter().enumerate() {
        let (_, dry) = fleet
            .post(i, "/api/flux/generate", &json!({ "prompt": prompt }))
            .await;
        bodies.push(
            json!({ "prompt": prompt, "dryRun": false, "confirmToken": dry["confirmToken"] }),
        );
    }
    let send = |i: usize, body: &Value| {
        fleet
            .http
            .post(fleet.url(i, "/api/flux/generate"))
            .header("Idempotency-Key", "order-fleet-2")
            .json(body)
            .send()
    };
    let (first, second) = tokio::join!(send(0, &bodies[0]), send(1, &bodies[1]));
    let mut statuses = [
        first.unwrap().status().as_u16(),
        second.unwrap().status().as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, [202, 422], "one accepted, the other refused");
    assert_eq!(bfl.submits(), 1);
}

/// Two live processes under one instance name would each take the other's jobs for its own (none taken over when
/// one dies, its events lost to the other's streams): the second refuses to start and names ORCH_INSTANCE_ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_a_live_instances_name_refuses_to_start() {
    let comfy = FakeComfy::start().await;
    let Some(fleet) = Fleet::start(1, &[&comfy], &[]) else {
        return;
    };
    let store = orchestrator::store::Store::open(&fleet.database)
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "instance a beats", || async {
        store.instances().await.unwrap().iter().any(|i| i.id == "a")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (lease, comfy_url) = (LEASE_SECS.to_string(), comfy.url());
    let env = [
        ("DATABASE_URL", fleet.database.as_str()),
        ("ORCH_INSTANCE_ID", "a"),
        ("FLEET_LEASE_SECS", lease.as_str()),
        ("ORCH_BIND", "127.0.0.1:0"),
        ("ORCH_COMFY_BIND", "127.0.0.1:0"),
        ("COMFY_URL", comfy_url.as_str()),
        ("DATA_DIR", data.to_str().unwrap()),
    ];
    let second = tokio::process::Command::from(crate::support::served::command(dir.path(), &env))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("the second process ends by itself")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("ORCH_INSTANCE_ID"), "{stderr}");
}

/// Two processes started at once under one name: neither saw the other's heartbeat at its start. At its next beat
/// the younger finds the older's and stops, naming ORCH_INSTANCE_ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_processes_started_at_once_under_one_name_the_younger_stops() {
    let comfy = FakeComfy::start().await;
    let Some(mut fleet) = Fleet::start(1, &[&comfy], &[]) else {
        return;
    };
    let store = orchestrator::store::Store::open(&fleet.database)
        .await
        .unwrap();
    let row = || async {
        let instances = store.instances().await.unwrap();
        instances.into_iter().find(|i| i.id == "a")
    };
    wait_until(Duration::from_secs(20), "instance a beats", || async {
        row().await.is_some()
    })
    .await;
    // An older process's beat under the same name, as a twin started a moment earlier writes it.
    let mut twin = row().await.unwrap();
    twin.started_at = "2000-01-01T00:00:00.000000Z".into();
    twin.heartbeat_at = orchestrator::clock::now();
    store.register_instance(&twin).await.unwrap();
    let status = crate::support::served::exit_of(
        &mut fleet.members[0].child,
        Duration::from_secs(LEASE_SECS * 3),
    )
    .await;
    assert!(!status.success());
    let lines = fleet.members[0].lines().join("\n");
    assert!(lines.contains("ORCH_INSTANCE_ID"), "{lines}");
}
