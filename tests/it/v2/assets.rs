//! `/api/v2/assets…`: uploads hashed on the way in and kept once, the dedup fast path, a workflow's asset uploaded to
//! the ComfyUI that runs it (the one it fails over to included), outputs as assets with `Range`.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use super::{image, loads, reference, submit, upload, wait_v2};
use crate::support::{TestApp, error_code};

/// The last prompt `comfy` queued loads (node 10) the file `bytes` were uploaded to it as.
fn assert_loaded_from_upload(comfy: &FakeComfy, bytes: &[u8]) {
    let prompt = comfy.received_prompts().pop().expect("a prompt was queued");
    let name = prompt["prompt"]["10"]["inputs"]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        comfy.uploads().get(&name).copied(),
        Some(bytes.len() as u64),
        "{:?}",
        comfy.uploads()
    );
}

fn blake3_of(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

/// The files in the asset folder (blobs, and any half-received upload).
fn stored_files(app: &TestApp) -> Vec<String> {
    match std::fs::read_dir(app.data_dir.join("assets")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn an_upload_is_hashed_kept_once_and_found_by_its_hash() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let bytes = image(1);
    let hash = blake3_of(&bytes);

    let (status, first) = upload(&app, &bytes, "photo.png", &[("tags", "input")]).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        first["hash"],
        hash.as_str(),
        "blake3 of the bytes, computed by the server"
    );
    assert_eq!(first["size_bytes"], bytes.len());
    assert_eq!(first["created_new"], true);
    assert_eq!(first["file_path"], "photo.png");
    let content = first["url"].as_str().unwrap();
    assert!(
        content.starts_with("http://") && content.ends_with("/content"),
        "{content}"
    );

    // The same bytes again: a new asset over the blob already held.
    let (status, second) = upload(&app, &bytes, "again.png", &[("expected_hash", &hash)]).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["created_new"], false);
    assert_ne!(second["id"], first["id"]);
    assert_eq!(
        stored_files(&app).len(),
        1,
        "one blob: {:?}",
        stored_files(&app)
    );

    // A wrong expected hash: refused, nothing kept (no half-written file either).
    let (status, refused) = upload(&app, &image(2), "other.png", &[("expected_hash", &hash)]).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(error_code(&refused), "hash_mismatch");
    assert_eq!(stored_files(&app).len(), 1, "{:?}", stored_files(&app));

    let head = |hash: String| {
        let app = &app;
        async move {
            app.http
                .head(app.url(&format!("/api/v2/assets/by-hash/{hash}")))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(head(hash.clone()).await, 200);
    assert_eq!(head(blake3_of(b"never uploaded")).await, 404);
    assert_eq!(head("blake3:../../etc".into()).await, 404);

    let (status, minted) = app
        .post_json(
            "/api/v2/assets/from-hash",
            &json!({"hash": hash, "file_path": "third.png"}),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["hash"], hash.as_str());
    assert_eq!(minted["size_bytes"], bytes.len());
    let (status, same) = app
        .post_json(
            "/api/v2/assets/from-hash",
            &json!({"hash": hash, "file_path": "third.png"}),
        )
        .await;
    assert_eq!(
        (status, &same["id"]),
        (200, &minted["id"]),
        "the same bytes and path: the asset that exists"
    );
    let (status, missing) = app
        .post_json(
            "/api/v2/assets/from-hash",
            &json!({"hash": blake3_of(b"no")}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&missing), "blob_not_found");

    let fetched = app
        .get_json(&format!("/api/v2/assets/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(fetched["hash"], hash.as_str());
    let whole = app
        .http
        .get(content)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.as_ref(), bytes.as_slice());

    // Deleting: the blob stays while another asset has it, and goes with the last.
    for asset in [&first, &second, &minted] {
        let id = asset["id"].as_str().unwrap();
        let status = app
            .http
            .delete(app.url(&format!("/api/v2/assets/{id}")))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204);
        let gone = app
            .http
            .get(app.url(&format!("/api/v2/assets/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 404);
        assert_eq!(error_code(&gone.json().await.unwrap()), "not_found");
    }
    assert!(stored_files(&app).is_empty(), "{:?}", stored_files(&app));
    assert_eq!(head(hash).await, 404);
}

#[tokio::test]
async fn bad_uploads_are_refused_with_the_contracts_codes() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let (status, body) = upload(&app, &image(3), "../escape.png", &[]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (422, "invalid_request"),
        "{body}"
    );
    // A content type is a MIME type: a line break in it would be a header injected into the part sent to ComfyUI.
    for bad in ["image/png\r\nX-Injected: yes", "not a type", "image/"] {
        let (status, body) = upload(&app, &image(3), "a.png", &[("content_type", bad)]).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (422, "invalid_request"),
            "{bad:?}: {body}"
        );
    }
    let (status, body) = upload(
        &app,
        &image(4),
        "b.png",
        &[("content_type", "Image/PNG; x=y")],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["content_type"], "image/png",
        "its essence is kept: {body}"
    );
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.http
            .delete(app.url(&format!("/api/v2/assets/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let not_multipart = app
        .http
        .post(app.url("/api/v2/assets"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_multipart.status(), 422);
    assert_eq!(
        error_code(&not_multipart.json().await.unwrap()),
        "invalid_request"
    );
    let (content_type, body) = super::multipart(b"", "x", &[("content_type", "image/png")]);
    let no_path = app
        .http
        .post(app.url("/api/v2/assets"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_path.status(), 422);
    assert!(stored_files(&app).is_empty(), "{:?}", stored_files(&app));
}

#[tokio::test]
async fn a_workflow_loads_its_asset_and_its_output_downloads_with_a_range() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let bytes = image(4);
    let (_, asset) = upload(&app, &bytes, "photo.png", &[]).await;

    let (status, _, missing) = submit(&app, &json!({"workflow": loads(&json!({"__type": "core/ASSET", "info": {"id": "4a4b5f2e-0000-4000-8000-000000000000"}}))}), None).await;
    assert_eq!(status, 422, "{missing}");
    assert_eq!(error_code(&missing), "missing_asset");
    assert_eq!(
        missing["error"]["details"]["missing_ids"],
        json!(["4a4b5f2e-0000-4000-8000-000000000000"])
    );
    assert!(comfy.received_prompts().is_empty(), "nothing was sent");

    let (status, _, job) = submit(
        &app,
        &json!({"workflow": loads(&reference(&asset)), "metadata": {"client": "acme"}}),
        None,
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = wait_v2(&app, id, "succeeded").await;
    assert_eq!(done["metadata"], json!({"client": "acme"}));
    assert!(
        done["completed_at"].is_string() && done["started_at"].is_string(),
        "{done}"
    );

    // ComfyUI got the bytes, and the prompt names them by the name it gave them.
    assert_loaded_from_upload(&comfy, &bytes);
    // The stored workflow keeps the reference (a resend uploads again to wherever it goes).
    let workflow = app.get_json(&format!("/api/v2/jobs/{id}/workflow")).await;
    assert_eq!(workflow["format"], "api");
    assert_eq!(
        workflow["workflow"]["10"]["inputs"]["image"]["__type"],
        "core/ASSET"
    );

    let output = &done["outputs"][0];
    assert_eq!(output["node_id"], "9");
    assert_eq!(output["type"], "image");
    assert_eq!(output["job_id"], id);
    let url = output["url"].as_str().unwrap();
    let whole = app
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.len() as u64, output["size_bytes"].as_u64().unwrap());
    let part = app
        .http
        .get(url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-9/{}", whole.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &whole[..10]);
    let beyond = app
        .http
        .get(url)
        .header("range", format!("bytes={}-", whole.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    // The output is an asset, and goes with its job only.
    let output_asset = app
        .get_json(&format!(
            "/api/v2/assets/{}",
            output["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(output_asset["job_id"], id);
    assert_eq!(output_asset["size_bytes"], output["size_bytes"]);
    let kept = app
        .http
        .delete(app.url(&format!(
            "/api/v2/assets/{}",
            output["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 403);

    // The same job through the first API, and the first API's jobs through v2.
    let v1 = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(v1["status"], "succeeded");
    let listed: Value = app.get_json("/api/v2/jobs?metadata[client]=acme").await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["jobs"][0]["id"], id);
    let free = app
        .run_workflow(testkit::fake_comfy::no_model_workflow())
        .await;
    let all = app.get_json("/api/v2/jobs").await;
    let ids: Vec<&str> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![free.trim_start_matches("/api/jobs/"), id],
        "newest first, v1 and v2 alike"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_moved_to_another_comfyui_finds_its_asset_there() {
    let first = super::jobs::sampler_comfy().await;
    first.set_step_delay(Duration::from_millis(3000));
    let second = FakeComfy::start().await;
    let app = TestApp::spawn_with(&format!("{},{}", first.url(), second.url()), |s| {
        s.comfy_read_timeout_secs = "2".into();
    })
    .await;
    let bytes = image(5);
    let (_, asset) = upload(&app, &bytes, "photo.png", &[]).await;
    // The second answers nothing while the jobs are handed out: both go to the first, one runs, one waits.
    second.set_hang(true);
    let blocker = app
        .post_json(
            "/api/jobs",
            &json!({"workflow": testkit::fake_comfy::ksampler_workflow()}),
        )
        .await
        .1;
    let (status, _, job) =
        submit(&app, &json!({"workflow": loads(&reference(&asset))}), None).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    second.set_hang(false);
    app.wait_for_job(blocker["id"].as_str().unwrap(), "running")
        .await;
    assert_eq!(
        app.get_json(&format!("/api/jobs/{id}")).await["backend_url"],
        first.url().as_str()
    );

    first.set_hang(true);
    first.close_sockets(1001, "going away");
    let done = wait_v2(&app, id, "succeeded").await;
    assert_eq!(
        app.get_json(&format!("/api/jobs/{id}")).await["backend_url"],
        second.url().as_str()
    );
    // The second ComfyUI received the bytes too, under the name its prompt gives.
    assert_loaded_from_upload(&second, &bytes);
    assert_eq!(done["outputs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn jobs_assets_and_outputs_are_there_after_a_restart() {
    let comfy = FakeComfy::start().await;
    let data = tempfile::tempdir().unwrap();
    let folder = data.path().display().to_string();
    let app = TestApp::spawn_with(&comfy.url(), |s| s.data_dir = folder.clone()).await;
    let bytes = image(6);
    let (_, asset) = upload(&app, &bytes, "kept.png", &[]).await;
    let (_, _, job) = submit(&app, &json!({"workflow": loads(&reference(&asset))}), None).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let before = wait_v2(&app, &id, "succeeded").await;
    app.stop().await;

    let app = TestApp::spawn_with(&comfy.url(), |s| s.data_dir = folder.clone()).await;
    let after = app.get_json(&format!("/api/v2/jobs/{id}")).await;
    // The same outputs (their URLs are on the new server's port).
    for key in ["id", "name", "size_bytes", "node_id"] {
        assert_eq!(after["outputs"][0][key], before["outputs"][0][key], "{key}");
    }
    let content = app
        .http
        .get(after["outputs"][0]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    let kept = app
        .get_json(&format!("/api/v2/assets/{}", asset["id"].as_str().unwrap()))
        .await;
    assert_eq!(kept["hash"], asset["hash"]);
    let again = app
        .http
        .get(kept["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(again.as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn an_upload_repeated_under_its_key_is_the_first_answer_again() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let send = |bytes: Vec<u8>| {
        let app = &app;
        async move {
            let fields = [("content_type", "image/png"), ("file_path", "keyed.png")];
            let (content_type, body) = super::multipart(&bytes, "keyed.png", &fields);
            let response = app
                .http
                .post(app.url("/api/v2/assets"))
                .header("content-type", content_type)
                .header("Idempotency-Key", "upload-1")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let replayed = response.headers().get("idempotency-replayed").cloned();
            (status, replayed, response.json::<Value>().await.unwrap())
        }
    };
    let (status, replayed, first) = send(image(5)).await;
    assert_eq!((status, replayed), (201, None), "{first}");
    let (status, replayed, again) = send(image(5)).await;
    assert_eq!(
        (status, replayed.as_ref().map(|v| v.to_str().unwrap())),
        (201, Some("true"))
    );
    assert_eq!(again["id"], first["id"], "one asset, not two");
    assert_eq!(again["created_new"], true, "as the first answer said");
    let (status, _, other) = send(image(6)).await;
    assert_eq!(
        (status, error_code(&other).as_str()),
        (422, "idempotency_key_reuse")
    );
    assert_eq!(stored_files(&app).len(), 1, "{:?}", stored_files(&app));
}
