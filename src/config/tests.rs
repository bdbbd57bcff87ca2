use super::*;
use clap::{Args, Parser};

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    settings: Settings,
}

fn settings(args: &[&str]) -> Settings {
    let mut argv = vec!["orchestrator"];
    argv.extend_from_slice(args);
    TestCli::try_parse_from(argv).expect("flags parse").settings
}

#[test]
fn defaults_are_valid_and_loopback() {
    let config = settings(&[]).validate(false).expect("defaults are valid");
    assert!(config.is_loopback());
    assert_eq!(config.bind.port(), 3000);
    assert_eq!(config.primary_comfy().origin(), "http://127.0.0.1:8188");
    assert_eq!(config.comfy.max_body_bytes, 100 * 1024 * 1024);
    assert_eq!(config.header_read_timeout, Duration::from_secs(10));
    assert_eq!(config.body_idle_timeout, Duration::from_secs(30));
    assert_eq!(config.body_timeout, Duration::from_secs(600));
    assert_eq!(config.max_connections, 1024);
}

#[test]
fn every_problem_is_listed_at_once() {
    let errors = settings(&[
        "--bind",
        "nonsense",
        "--comfy-url",
        "ftp://x:1,http://h:1/path",
        "--comfy-read-timeout-secs",
        "0",
        "--max-body-mb",
        "lots",
        "--log-format",
        "xml",
        "--allowed-hosts",
        "http://evil/",
        "--database-url",
        "mysql://u:p@h/db",
    ])
    .validate(false)
    .expect_err("invalid");
    let text = errors.to_string();
    for needle in [
        "ORCH_BIND",
        "ftp://x:1",
        "http://h:1/path",
        "COMFY_READ_TIMEOUT_SECS",
        "MAX_BODY_MB",
        "LOG_FORMAT",
        "ORCH_ALLOWED_HOSTS",
        "DATABASE_URL",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert_eq!(errors.0.len(), 8, "{text}");
    assert!(!text.contains("u:p"), "a store password leaked: {text}");
}

#[test]
fn non_loopback_bind_requires_a_token() {
    let errors = settings(&["--bind", "0.0.0.0:3000"])
        .validate(false)
        .expect_err("token needed");
    assert!(errors.to_string().contains("ORCHESTRATOR_TOKEN"));
    let config = settings(&["--bind", "0.0.0.0:3000", "--token", "0123456789abcdef0123"])
        .validate(false)
        .expect("valid with a token");
    assert!(!config.is_loopback());
}

#[test]
fn secrets_never_print() {
    let config = settings(&["--token", "super-secret-token-value"])
        .validate(false)
        .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("super-secret-token-value"), "{debug}");
    assert!(debug.contains("***"));
}

#[test]
fn the_settings_page_lists_every_setting_once_by_its_real_name() {
    let config = Settings::defaults().validate(false).unwrap();
    let listed: Vec<&str> = config.effective().iter().map(|(name, _)| *name).collect();
    let command = Settings::augment_args(clap::Command::new("orchestrator"));
    let mut variables: Vec<&str> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env()?.to_str())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    variables.sort();
    assert_eq!(sorted, variables);
    assert_eq!(
        Settings::name_of("comfy_bind"),
        "ORCH_COMFY_BIND (--comfy-bind)"
    );
}

#[test]
fn every_secret_is_masked_on_the_settings_page() {
    let secrets = Settings::secret_variables();
    assert_eq!(
        secrets,
        [
            "ORCHESTRATOR_TOKEN",
            "DATABASE_URL",
            "BFL_API_KEY",
            "V0_API_KEY",
            "COMFY_ORG_API_KEY",
            "JOB_WEBHOOK_URL",
            "JOB_WEBHOOK_SECRET"
        ]
    );
    let config = settings(&[
        "--token",
        "token-0123456789abcdef",
        "--bfl-api-key",
        "bfl-secret-value",
        "--v0-api-key",
        "v0-secret-value",
        "--comfy-org-api-key",
        "comfy-secret-value",
        "--database-url",
        "sqlite:///tmp/db-secret-value",
        "--job-webhook-url",
        "https://hooks.example.com/secret-value",
        "--job-webhook-secret",
        "hook-secret-value",
    ])
    .validate(false)
    .unwrap();
    for (name, value) in config.effective() {
        if secrets.contains(&name) {
            assert_eq!(value, "***", "{name}");
        }
        assert!(!value.contains("secret-value"), "{name} = {value}");
        assert!(!value.contains("0123456789abcdef"), "{name} = {value}");
    }
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let defaults = Settings::defaults();
    assert_eq!(defaults.bind, "127.0.0.1:3000");
    assert_eq!(defaults.comfy_bind, "127.0.0.1:3001");
    assert_eq!(defaults.max_connections, "1024");
    assert_eq!(defaults.allow_generation, "false");
    assert!(defaults.bfl_api_key.is_none() && defaults.token.is_none());
}

#[test]
fn a_webhook_needs_an_http_url_and_a_secret() {
    let problems = |args: &[&str]| match settings(args).validate(false) {
        Ok(config) => {
            assert!(config.webhook.is_some());
            Vec::new()
        }
        Err(errors) => errors.0,
    };
    assert!(
        problems(&[
            "--job-webhook-url",
            "https://h.example/x",
            "--job-webhook-secret",
            "s"
        ])
        .is_empty()
    );
    let missing = problems(&["--job-webhook-url", "https://h.example/x"]);
    assert!(
        missing.iter().any(|p| p.contains("JOB_WEBHOOK_SECRET")),
        "{missing:?}"
    );
    let bad = problems(&[
        "--job-webhook-url",
        "ftp://h.example/x",
        "--job-webhook-secret",
        "s",
    ]);
    assert!(bad.iter().any(|p| p.contains("JOB_WEBHOOK_URL")), "{bad:?}");
    let retry = problems(&[
        "--job-webhook-url",
        "http://127.0.0.1:9/x",
        "--job-webhook-secret",
        "s",
        "--job-webhook-retry-ms",
        "0",
    ]);
    assert!(
        retry.iter().any(|p| p.contains("JOB_WEBHOOK_RETRY_MS")),
        "{retry:?}"
    );
    assert!(settings(&[]).validate(false).unwrap().webhook.is_none());
}

/// Two instances on one host sharing a data folder get different names by default (they cannot listen on one
/// address), and one instance keeps its name across restarts.
#[test]
fn the_default_instance_name_differs_by_listening_address_and_stays_across_restarts() {
    let id = |bind: &str| {
        settings(&["--bind", bind, "--data-dir", "/srv/orch"])
            .validate(false)
            .unwrap()
            .fleet
            .instance_id
    };
    assert_ne!(id("127.0.0.1:3000"), id("127.0.0.1:3010"));
    assert_eq!(id("127.0.0.1:3000"), id("127.0.0.1:3000"));
}

/// A fleet listening on every address must say where the others reach it: they would otherwise send the fleet's
/// token to their own port.
#[test]
fn a_fleet_on_every_address_needs_its_public_url() {
    let base = [
        "--bind",
        "0.0.0.0:3000",
        "--token",
        "a-long-enough-token-0123456789",
        "--database-url",
        "postgres://orchestrator@db.lan/orchestrator",
    ];
    let errors = settings(&base).validate(false).unwrap_err();
    assert!(
        errors.0.iter().any(|e| e.contains("ORCH_PUBLIC_URL")),
        "{errors:?}"
    );
    let mut named = base.to_vec();
    named.extend(["--public-url", "http://10.0.0.5:3000"]);
    assert!(settings(&named).validate(false).is_ok());
    let mut alone = base.to_vec();
    alone[5] = "sqlite:///srv/orch/orchestrator.db";
    assert!(
        settings(&alone).validate(false).is_ok(),
        "SQLite is one instance"
    );
}

#[test]
fn comfyui_reaches_the_egress_on_the_bound_address_or_the_public_url() {
    let config = settings(&[]).validate(false).unwrap();
    assert_eq!(
        config.comfy_org_egress_url(),
        "http://127.0.0.1:3000/api/comfy-org/"
    );
    let everywhere = settings(&[
        "--bind",
        "0.0.0.0:3100",
        "--token",
        "t0ken-t0ken-t0ken-t0ken",
    ])
    .validate(false)
    .unwrap();
    assert_eq!(
        everywhere.comfy_org_egress_url(),
        "http://127.0.0.1:3100/api/comfy-org/"
    );
    let fleet = settings(&[
        "--bind",
        "0.0.0.0:3100",
        "--token",
        "t0ken-t0ken-t0ken-t0ken",
        "--public-url",
        "http://orch-a.lan:3100",
    ])
    .validate(false)
    .unwrap();
    assert_eq!(
        fleet.comfy_org_egress_url(),
        "http://orch-a.lan:3100/api/comfy-org/"
    );
}
