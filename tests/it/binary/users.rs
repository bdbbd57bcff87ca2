//! `orchestrator users …` on the configured store, with no server running: people added, listed, changed,
//! disabled and enabled again; a password only from standard input or a prompt, kept as an argon2id hash.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::support::served::command;

/// Runs `orchestrator users <args>` on the data folder `data`, `stdin` on its standard input.
fn users(data: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let dir = data.parent().unwrap();
    let mut child = command(dir, &[("DATA_DIR", data.to_str().unwrap())])
        .arg("users")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn people_are_added_changed_and_disabled_from_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ok = |output: Output| {
        assert!(output.status.success(), "{}", said(&output));
        said(&output)
    };
    let failed = |output: Output| {
        assert_eq!(output.status.code(), Some(1), "{}", said(&output));
        said(&output)
    };
    let password = "a long enough password\n";
    let admin = ["add", "alice", "--role", "admin", "--password-stdin"];
    assert!(ok(users(&data, &admin, password)).contains("added alice (admin)"));
    // A name is taken whatever its case; a role is one of four; a password is long enough.
    let again = ["add", "ALICE", "--role", "viewer", "--password-stdin"];
    assert!(failed(users(&data, &again, password)).contains("taken"));
    let boss = ["add", "bob", "--role", "boss", "--password-stdin"];
    assert!(failed(users(&data, &boss, password)).contains("viewer, generator, approver or admin"));
    let generator = ["add", "bob", "--role", "generator", "--password-stdin"];
    assert!(failed(users(&data, &generator, "short\n")).contains("at least 10"));
    // Without a terminal and without --password-stdin, nothing is asked and nothing added.
    let asked = users(&data, &["add", "carol", "--role", "viewer"], "");
    assert!(failed(asked).contains("--password-stdin"));
    ok(users(&data, &generator, "bob's own password\n"));

    ok(users(&data, &["set-role", "Bob", "approver"], ""));
    ok(users(&data, &["disable", "bob"], ""));
    let listed = ok(users(&data, &["list"], ""));
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines[0].starts_with("alice") && lines[0].contains("admin"),
        "{listed}"
    );
    assert!(
        lines[1].contains("approver") && lines[1].contains("disabled"),
        "{listed}"
    );
    ok(users(&data, &["enable", "bob"], ""));
    assert!(!ok(users(&data, &["list"], "")).contains("disabled"));
    assert!(failed(users(&data, &["disable", "nobody"], "")).contains("nobody is called"));

    ok(users(
        &data,
        &["reset-password", "bob", "--password-stdin"],
        "a brand new password\n",
    ));
    let store = orchestrator::store::Store::open(&crate::support::database_for(&data))
        .await
        .unwrap();
    let hash = store.password_hash("bob").await.unwrap().unwrap();
    assert!(hash.starts_with("$argon2id$"));
    assert!(orchestrator::people::password::verify(
        &hash,
        "a brand new password"
    ));
    assert!(!orchestrator::people::password::verify(
        &hash,
        "bob's own password"
    ));
    assert!(!said(&users(&data, &["list"], "")).contains("argon2"));
    store.close().await;
}
