//! The configuration a user gives the binary, and the doctor's report on it.

use serde_json::Value;
use testkit::fake_comfy::FakeComfy;

use crate::support::served::{Served, command};

#[test]
fn every_configuration_problem_is_listed_and_exit_code_is_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(
        dir.path(),
        &[
            ("ORCH_BIND", "0.0.0.0:99999"),
            ("COMFY_URL", "ftp://comfy:8188"),
            ("MAX_BODY_MB", "many"),
            ("LOG_FORMAT", "xml"),
            ("COMFY_READ_TIMEOUT_SECS", "-1"),
            ("DATABASE_URL", "mysql://user:hunter2@db/orch"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for name in [
        "ORCH_BIND",
        "COMFY_URL",
        "MAX_BODY_MB",
        "LOG_FORMAT",
        "COMFY_READ_TIMEOUT_SECS",
        "DATABASE_URL",
    ] {
        assert!(stderr.contains(name), "{name} not listed in:\n{stderr}");
    }
    assert!(
        !stderr.contains("hunter2"),
        "a secret was printed:\n{stderr}"
    );

    // The documented example, copied as it is, is a valid configuration.
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example"),
        dir.path().join(".env"),
    )
    .unwrap();
    let output = command(
        dir.path(),
        &[("ORCHESTRATOR_TOKEN", "a-token-that-must-not-print")],
    )
    .arg("config")
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("127.0.0.1:3000") && printed.contains("8188"),
        "{printed}"
    );
    assert!(
        !printed.contains("a-token-that-must-not-print"),
        "{printed}"
    );

    // A token is required off loopback, and a .env file is read.
    std::fs::write(dir.path().join(".env"), "ORCH_BIND=0.0.0.0:3000\n").unwrap();
    let output = command(dir.path(), &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ORCHESTRATOR_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_prints_the_report_with_or_without_a_running_server() {
    let fake = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &fake.url());
    let data = dir.path().join("data");
    let env = [
        ("ORCH_BIND", served.addr.to_string()),
        ("DATA_DIR", data.display().to_string()),
        ("COMFY_URL", fake.url()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let healthy = command(dir.path(), &env).arg("doctor").output().unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    let text = String::from_utf8_lossy(&healthy.stdout);
    assert!(
        text.contains("overall      healthy") && text.contains("version 0.3.64"),
        "{text}"
    );
    drop(served);

    // Nothing serves, ComfyUI is gone: the command makes the report itself and says ComfyUI is down.
    let gone = crate::support::closed_port().await;
    let env = [
        ("ORCH_BIND", gone.to_string()),
        ("DATA_DIR", data.display().to_string()),
        ("COMFY_URL", format!("http://{gone}")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let down = command(dir.path(), &env).args(["doctor"]).output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    let text = String::from_utf8_lossy(&down.stderr);
    assert!(
        text.contains("not running") && text.contains("overall      down"),
        "{text}"
    );
    let json = command(dir.path(), &env)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&json.stderr).unwrap();
    assert_eq!(report["comfy"]["status"], "offline");
}

/// With no server to ask, the doctor looks at the store as it is: one it cannot reach is reported (without the
/// password in its URL), and one behind on migrations is reported and left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_store_it_cannot_reach_or_one_behind_on_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let gone = crate::support::closed_port().await;
    let unreachable = format!("postgres://studio:hunter2@{gone}/orchestrator");
    let env = [
        ("ORCH_BIND", gone.to_string()),
        ("COMFY_URL", format!("http://{gone}")),
        ("DATABASE_URL", unreachable),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let down = command(dir.path(), &env).arg("doctor").output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    let text = String::from_utf8_lossy(&down.stderr);
    assert!(text.contains("UNREACHABLE postgres://studio@"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // A store one migration behind (as a newer Orchestrator would find one an older one made).
    let url = format!("sqlite://{}", dir.path().join("behind.db").display());
    orchestrator::store::Store::open(&url)
        .await
        .unwrap()
        .close()
        .await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let (last,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let env = [
        ("ORCH_BIND", gone.to_string()),
        ("COMFY_URL", format!("http://{gone}")),
        ("DATABASE_URL", url.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let behind = command(dir.path(), &env).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&behind.stderr).into_owned()
        + &String::from_utf8_lossy(&behind.stdout);
    assert!(text.contains("BEHIND"), "{text}");
    assert!(text.contains("migrations applied"), "{text}");
    // Looking changed nothing: the store is still behind.
    let store = orchestrator::store::Store::open_unmigrated(&url)
        .await
        .unwrap();
    let (applied, expected) = store.migrations().await.unwrap();
    assert_eq!(applied + 1, expected);
}
