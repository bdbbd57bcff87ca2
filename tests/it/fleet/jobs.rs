//! The fleet's jobs: one queue drained by every instance, each job sent once, taken over when its instance dies,
//! followed from any instance, and its output served by all.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use super::{Fleet, LEASE_SECS, sent};
use crate::support::{client, wait_until};

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
    let within = Duration::from_secs(LEASE_SECS + 10);
    tokio::time::timeout(within, fleet.wait_all(0, &running, "succeeded", within))
        .await
        .unwrap_or_else(|_| {
            panic!("c's running jobs were not all taken over and succeeded within {within:?}")
        });
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

fn number(event: &orchestrator::client::Event) -> i64 {
    event
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .expect("a numbered event")
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
