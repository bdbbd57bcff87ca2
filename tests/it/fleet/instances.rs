//! One instance name, one live process: a second one under it refuses to start, and of two started at once the
//! younger stops.

use std::time::Duration;

use testkit::fake_comfy::FakeComfy;

use super::{Fleet, LEASE_SECS};
use crate::support::wait_until;

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
