use super::*;

fn client() -> reqwest::Client {
    orchestrator::outbound::install_crypto_provider();
    reqwest::Client::new()
}

async fn get(url: &str) -> (u16, String, Bytes) {
    let response = client().get(url).send().await.expect("the fake answers");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, kind, response.bytes().await.expect("a body"))
}

/// A frontend folder: index.html, a script, a style sheet, a font, an extension and a secret beside it.
fn frontend() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = dir.path().join("static");
    std::fs::create_dir_all(root.join("assets")).unwrap();
    std::fs::create_dir_all(root.join("extensions/core/.hidden")).unwrap();
    std::fs::write(
        root.join("index.html"),
        "<!doctype html><title>ComfyUI</title>",
    )
    .unwrap();
    std::fs::write(root.join("assets/index-x.js"), "export {}").unwrap();
    std::fs::write(root.join("assets/a b.css"), "body{}").unwrap();
    std::fs::write(root.join("assets/f.woff2"), [0u8, 1]).unwrap();
    std::fs::write(root.join("assets/logo.svg"), "<svg/>").unwrap();
    std::fs::write(root.join("extensions/core/widgets.js"), "").unwrap();
    std::fs::write(root.join("extensions/core/.hidden/x.js"), "").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("assets/link.txt"))
        .unwrap();
    (dir, root)
}

#[tokio::test]
async fn without_a_front_end_root_there_is_no_page() {
    let fake = FakeComfy::start().await;
    assert_eq!(get(&format!("{}/", fake.url())).await.0, 404);
    assert_eq!(get(&format!("{}/index.html", fake.url())).await.0, 404);
    assert_eq!(get(&format!("{}/extensions", fake.url())).await.2, "[]");
}

#[tokio::test]
async fn serves_the_frontend_unprefixed_with_its_types_and_never_outside_its_folder() {
    let (_dir, root) = frontend();
    let fake = FakeComfy::start().await;
    fake.set_front_end_root(root);
    let url = fake.url();
    let (status, kind, body) = get(&format!("{url}/")).await;
    assert_eq!((status, kind.as_str()), (200, "text/html"));
    assert!(body.starts_with(b"<!doctype html>"));
    // `/` is a route, so ComfyUI serves it under /api too; the files are not.
    assert_eq!(get(&format!("{url}/api/")).await.0, 200);
    for (path, expected) in [
        ("/assets/index-x.js", "text/javascript"),
        ("/assets/a%20b.css", "text/css"),
        ("/assets/f.woff2", "font/woff2"),
        ("/assets/logo.svg", "image/svg+xml"),
        ("/extensions/core/widgets.js", "text/javascript"),
    ] {
        let (status, kind, _) = get(&format!("{url}{path}")).await;
        assert_eq!((status, kind.as_str()), (200, expected), "{path}");
    }
    for (path, expected) in [
        ("/api/assets/index-x.js", 404),
        ("/api", 404),
        ("/assets", 403),
        ("/assets/", 403),
        ("/assets/missing.js", 404),
        ("/assets/%2e%2e/%2e%2e/secret.txt", 404),
        ("/assets/..%2f..%2fsecret.txt", 404),
        ("/%2fetc%2fpasswd", 404),
        ("/assets/link.txt", 404),
    ] {
        assert_eq!(get(&format!("{url}{path}")).await.0, expected, "{path}");
    }
    let listed: Value = serde_json::from_slice(&get(&format!("{url}/api/extensions")).await.2)
        .expect("a JSON list");
    assert_eq!(listed, json!(["/extensions/core/widgets.js"]));
}

#[tokio::test]
async fn keeps_settings_and_user_files_as_a_single_user_comfyui() {
    let fake = FakeComfy::start().await;
    let url = fake.url();
    let client = client();
    let users: Value = serde_json::from_slice(&get(&format!("{url}/api/users")).await.2).unwrap();
    assert_eq!(users, json!({"storage": "server", "migrated": true}));
    assert_eq!(get(&format!("{url}/api/settings")).await.2, "{}");
    let posted = client
        .post(format!("{url}/api/settings/Comfy.TutorialCompleted"))
        .body("true")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    client
        .post(format!("{url}/settings"))
        .body(r#"{"Comfy.Locale": "en"}"#)
        .send()
        .await
        .unwrap();
    let settings: Value =
        serde_json::from_slice(&get(&format!("{url}/api/settings")).await.2).unwrap();
    assert_eq!(
        settings,
        json!({"Comfy.TutorialCompleted": true, "Comfy.Locale": "en"})
    );
    assert_eq!(
        get(&format!("{url}/api/settings/Comfy.Locale")).await.2,
        "\"en\""
    );
    assert_eq!(get(&format!("{url}/api/settings/Unknown")).await.2, "null");
    let stored = get(&format!("{url}/api/userdata/comfy.settings.json"))
        .await
        .2;
    assert!(String::from_utf8_lossy(&stored).contains("\n    \"Comfy.Locale\": \"en\""));

    let list = format!("{url}/api/userdata?dir=workflows&recurse=true&split=false&full_info=true");
    assert_eq!(get(&list).await.0, 404);
    assert_eq!(get(&format!("{url}/api/userdata")).await.0, 400);
    assert_eq!(get(&format!("{url}/api/userdata?dir=..%2F..")).await.0, 403);
    let saved = client
        .post(format!(
            "{url}/api/userdata/workflows%2Fa.json?overwrite=false"
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        saved.json::<Value>().await.unwrap(),
        json!("workflows/a.json")
    );
    let again = client
        .post(format!(
            "{url}/api/userdata/workflows%2Fa.json?overwrite=false"
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let listed: Value = serde_json::from_slice(&get(&list).await.2).unwrap();
    assert_eq!(listed[0]["path"], "a.json");
    assert_eq!(listed[0]["size"], 2);
    let (status, kind, body) = get(&format!("{url}/api/userdata/workflows%2Fa.json")).await;
    assert_eq!(
        (status, kind.as_str(), &body[..]),
        (200, "application/json", &b"{}"[..])
    );
    assert_eq!(get(&format!("{url}/api/userdata/user.css")).await.0, 404);
    let deleted = client
        .delete(format!("{url}/api/userdata/workflows%2Fa.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
}

#[tokio::test]
async fn answers_the_frontends_other_start_up_routes() {
    let fake = FakeComfy::start_with_models(&[("checkpoints", "x.safetensors")]).await;
    let url = fake.url();
    assert_eq!(get(&format!("{url}/api/i18n")).await.2, "{}");
    assert_eq!(get(&format!("{url}/api/workflow_templates")).await.2, "{}");
    let folders: Value =
        serde_json::from_slice(&get(&format!("{url}/api/experiment/models")).await.2).unwrap();
    let names: Vec<&str> = folders
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(
        names.contains(&"checkpoints")
            && !names.contains(&"configs")
            && !names.contains(&"custom_nodes")
    );
    let checkpoints: Value = serde_json::from_slice(
        &get(&format!("{url}/api/experiment/models/checkpoints"))
            .await
            .2,
    )
    .unwrap();
    assert_eq!(
        checkpoints,
        json!([{"name": "x.safetensors", "pathIndex": 0}])
    );
    assert_eq!(
        get(&format!("{url}/api/experiment/models/unet")).await.0,
        404
    );
}
