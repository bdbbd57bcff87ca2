//! The gallery's API: every output newest first, keyset pages, filters by template, backend, status and day, a
//! search in the prompts (FTS5 on SQLite, a GIN index on PostgreSQL), and thumbnails made once and kept on disk.

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use crate::support::TestApp;

async fn run(app: &TestApp, body: Value) -> String {
    let (status, job) = app.post_json("/api/jobs", &body).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&id, "succeeded").await;
    id
}

async fn template_job(app: &TestApp, prompt: &str) -> String {
    let params = json!({ "prompt": prompt, "checkpoint": "tiny-sd15.safetensors", "steps": 4 });
    run(app, json!({ "template": "sdxl-t2i", "params": params })).await
}

/// The job ids of a gallery page, in order (one per output), and its cursor.
async fn page(app: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let response = app
        .http
        .get(app.url(&format!("/api/gallery?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    let body: Value = response.json().await.unwrap();
    let ids = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["job_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, body["next_cursor"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_newest_first_paged_filtered_and_searched() {
    let comfy = FakeComfy::start_with_models(&[("checkpoints", "tiny-sd15.safetensors")]).await;
    let app = TestApp::spawn(&comfy.url()).await;
    let a = template_job(&app, "a lighthouse at dawn").await;
    let b = template_job(&app, "a red fox in fresh snow").await;
    let c = template_job(&app, "the lighthouse keeper, a portrait").await;
    let d = run(
        &app,
        json!({ "workflow": testkit::fake_comfy::no_model_workflow() }),
    )
    .await;

    assert_eq!(
        page(&app, "").await,
        (vec![d.clone(), c.clone(), b.clone(), a.clone()], None)
    );
    let (first, cursor) = page(&app, "limit=2").await;
    assert_eq!(first, [d.clone(), c.clone()]);
    let cursor = cursor.expect("a next page");
    let (second, end) = page(&app, &format!("limit=2&cursor={}", urlencode(&cursor))).await;
    assert_eq!((second, end), (vec![b.clone(), a.clone()], None));

    assert_eq!(
        page(&app, "template=sdxl-t2i").await.0,
        [c.clone(), b.clone(), a.clone()]
    );
    assert_eq!(page(&app, "q=lighthouse").await.0, [c.clone(), a.clone()]);
    assert_eq!(
        page(&app, "q=LIGHT%20keep").await.0,
        vec![c.clone()],
        "every word, each a prefix"
    );
    assert_eq!(page(&app, "q=fox").await.0, vec![b.clone()]);
    assert_eq!(
        page(&app, "q=%22%20OR%20%22").await.0,
        Vec::<String>::new(),
        "no query syntax gets through"
    );
    assert_eq!(
        page(
            &app,
            "q=fox&template=sdxl-t2i&status=succeeded&backend=comfy"
        )
        .await
        .0,
        vec![b.clone()]
    );
    assert!(page(&app, "status=failed").await.0.is_empty());
    assert!(page(&app, "backend=flux").await.0.is_empty());
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let yesterday = (chrono::Utc::now() - chrono::TimeDelta::days(1))
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(
        page(&app, &format!("since={today}&until={today}"))
            .await
            .0
            .len(),
        4
    );
    assert!(page(&app, &format!("until={yesterday}")).await.0.is_empty());
    for bad in ["status=nope", "limit=0", "backend=v0", "since=2026-13-01"] {
        let response = app
            .http
            .get(app.url(&format!("/api/gallery?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{bad}");
    }

    // An item says what it is; its prompt is the job's.
    let body = app.get_json("/api/gallery?q=fox").await;
    let item = &body["items"][0];
    assert_eq!(item["prompt"], "a red fox in fresh snow");
    assert_eq!(item["template"], "sdxl-t2i");
    assert_eq!(item["content_type"], "image/png");
    assert!(
        item["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/api/jobs/{b}/outputs/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thumbnail_is_made_once_fits_320_pixels_and_is_kept() {
    let comfy = FakeComfy::start_with_models(&[("checkpoints", "tiny-sd15.safetensors")]).await;
    comfy.set_pictures(true);
    let app = TestApp::spawn(&comfy.url()).await;
    let id = template_job(&app, "a glass greenhouse").await;
    let body = app.get_json("/api/gallery").await;
    let item = &body["items"][0];
    let thumbnail = item["thumbnail_url"].as_str().unwrap();
    let response = app.http.get(app.url(thumbnail)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    let bytes = response.bytes().await.unwrap();
    let picture = image::load_from_memory(&bytes).expect("a JPEG");
    assert!(picture.width() <= 320 && picture.height() <= 320);
    assert!(picture.width() >= 200, "{}", picture.width());

    let name = item["name"].as_str().unwrap();
    let kept = app
        .data_dir
        .join(format!("outputs/{id}/.thumbnails/{name}.jpg"));
    let made = std::fs::metadata(&kept)
        .expect("kept on disk")
        .modified()
        .unwrap();
    let again = app.http.get(app.url(thumbnail)).send().await.unwrap();
    assert_eq!(again.bytes().await.unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        made,
        "made once"
    );
    // The thumbnail is not one of the job's outputs.
    let job = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["outputs"].as_array().unwrap().len(), 1);
    let missing = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/outputs/nothing.png/thumbnail")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn again_makes_a_new_seed_and_delete_removes_the_job_with_its_files() {
    let comfy = FakeComfy::start_with_models(&[("checkpoints", "tiny-sd15.safetensors")]).await;
    let app = TestApp::spawn(&comfy.url()).await;
    let first = template_job(&app, "a lighthouse at dawn").await;
    let body = app.get_json("/api/gallery").await;
    let thumbnail = body["items"][0]["thumbnail_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.http
            .get(app.url(&thumbnail))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let folder = app.data_dir.join(format!("outputs/{first}"));
    assert!(folder.join(".thumbnails").is_dir());

    // Generate again: the same template and prompt, another seed.
    let (status, again) = app
        .post_json(&format!("/api/jobs/{first}/again"), &json!({}))
        .await;
    assert_eq!(status, 202, "{again}");
    let second = again["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&second, "succeeded").await;
    let (a, b) = (
        app.get_json(&format!("/api/jobs/{first}")).await,
        app.get_json(&format!("/api/jobs/{second}")).await,
    );
    assert_eq!(b["template"], "sdxl-t2i");
    assert_eq!(b["params"]["prompt"], a["params"]["prompt"]);
    assert_ne!(b["params"]["seed"], a["params"]["seed"]);
    assert!(b["params"]["seed"].is_u64());
    // A template with an input image: the same image (kept as an asset), sent again, with a new seed.
    let image = format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            testkit::fake_comfy::OUTPUT_PNG
        )
    );
    let params = json!({ "prompt": "x", "image": image, "checkpoint": "tiny-sd15.safetensors" });
    let i2i = run(&app, json!({ "template": "sdxl-i2i", "params": params })).await;
    let (status, again) = app
        .post_json(&format!("/api/jobs/{i2i}/again"), &json!({}))
        .await;
    assert_eq!(status, 202, "{again}");
    let i2i_again = again["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&i2i_again, "succeeded").await;
    let (a, b) = (
        app.get_json(&format!("/api/jobs/{i2i}")).await,
        app.get_json(&format!("/api/jobs/{i2i_again}")).await,
    );
    assert_eq!(b["params"]["image"], a["params"]["image"]);
    assert_ne!(b["params"]["seed"], a["params"]["seed"]);
    let sent = comfy.received_prompts().pop().unwrap();
    assert_eq!(
        sent["prompt"]["3"]["inputs"]["seed"], b["params"]["seed"],
        "the new seed is what ComfyUI got"
    );
    let image_name = sent["prompt"]["10"]["inputs"]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        comfy.uploads().contains_key(&image_name),
        "the image went to ComfyUI: {image_name}"
    );
    let raw = run(
        &app,
        json!({ "workflow": testkit::fake_comfy::no_model_workflow() }),
    )
    .await;
    let (status, refused) = app
        .post_json(&format!("/api/jobs/{raw}/again"), &json!({}))
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("validation_failed")),
        "{refused}"
    );

    // A job still running is not deleted.
    comfy.set_step_delay(std::time::Duration::from_millis(300));
    let (_, slow) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": testkit::fake_comfy::no_model_workflow() }),
        )
        .await;
    let slow = slow["id"].as_str().unwrap().to_owned();
    let refused = app
        .http
        .delete(app.url(&format!("/api/jobs/{slow}")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "job_running");
    comfy.set_step_delay(std::time::Duration::from_millis(1));
    app.wait_for_job(&slow, "succeeded").await;

    // Deleted: the row, its events and its files; the gallery no longer lists it.
    let deleted = app
        .http
        .delete(app.url(&format!("/api/jobs/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204, "{:?}", deleted.text().await);
    assert!(!folder.exists(), "the outputs and thumbnails are gone");
    let gone = app
        .http
        .get(app.url(&format!("/api/jobs/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    assert!(!page(&app, "").await.0.contains(&first));
    assert!(page(&app, "").await.0.contains(&second));
    let again = app
        .http
        .delete(app.url(&format!("/api/jobs/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn a_video_output_has_no_thumbnail_and_downloads_with_a_range() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let workflow = json!({
        "1": { "class_type": "EmptyImage", "inputs": { "width": 64, "height": 64, "batch_size": 1, "color": 0 } },
        "2": { "class_type": "SaveWEBM", "inputs": { "images": ["1", 0], "filename_prefix": "clip", "codec": "vp9", "fps": 12.0, "crf": 32.0 } }
    });
    let id = run(&app, json!({ "workflow": workflow })).await;
    let body = app.get_json("/api/gallery").await;
    let item = &body["items"][0];
    assert_eq!(item["job_id"], id.as_str());
    assert_eq!(item["content_type"], "video/webm");
    assert!(item["thumbnail_url"].is_null(), "{item}");
    let url = app.url(item["url"].as_str().unwrap());
    let part = app
        .http
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    let bytes = part.bytes().await.unwrap();
    assert_eq!(&bytes[..], &testkit::fake_comfy::OUTPUT_WEBM[100..200]);
    let thumbnail = app
        .http
        .get(format!("{url}/thumbnail"))
        .send()
        .await
        .unwrap();
    assert_eq!(thumbnail.status(), 404);
}

/// A 12000×12000 output (17 KB as a 1-bit PNG, 144 MB and more decoded): eight thumbnail requests at once leave the
/// server's memory nearly where it was, and each gets a picture, the placeholder for this one.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_of_a_huge_picture_keep_memory_bounded() {
    use crate::support::served::Served;
    const HUGE: &[u8] = include_bytes!("../fixtures/images/huge-12000x12000.png");
    let comfy = FakeComfy::start().await;
    comfy.set_output_png(bytes::Bytes::from_static(HUGE));
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &comfy.url());
    let client = crate::support::client();
    let job = served
        .run_workflow(&testkit::fake_comfy::no_model_workflow())
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let name = job["outputs"][0]["name"].as_str().unwrap().to_owned();
    // The follower made the thumbnail already; taken away, the requests below make it again, all at once.
    let kept = dir.path().join(format!("data/outputs/{id}/.thumbnails"));
    assert!(
        kept.join(format!("{name}.jpg")).is_file(),
        "made with the job"
    );
    std::fs::remove_dir_all(&kept).unwrap();
    let (_, baseline_peak) = served.memory_kib();

    let url = served.url(&format!("/api/jobs/{id}/outputs/{name}/thumbnail"));
    let requests = (0..8).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client.get(&url).send().await.unwrap();
            (response.status(), response.bytes().await.unwrap())
        }
    });
    for (status, bytes) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200);
        let picture = image::load_from_memory(&bytes).expect("a JPEG");
        assert!(picture.width() <= 320 && picture.height() <= 320);
    }
    let (_, peak) = served.memory_kib();
    let growth_mib = peak.saturating_sub(baseline_peak) / 1024;
    eprintln!("thumbnails: 8 requests for a 12000×12000 output, peak RSS grew by {growth_mib} MiB");
    assert!(growth_mib < 300, "peak RSS grew by {growth_mib} MiB");
}

/// A FLUX job's stored "workflow" is BFL's payload: "generate again" refuses it (it goes through FLUX, with its
/// confirmation) and sends nothing to ComfyUI.
#[tokio::test]
async fn a_flux_job_is_not_generated_again_as_a_comfy_workflow() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let store = orchestrator::store::Store::open(&crate::support::database_for(&app.data_dir))
        .await
        .unwrap();
    let payload = json!({ "prompt": "a fox", "width": 1024, "height": 768 });
    let new = orchestrator::store::NewJob {
        backend: orchestrator::model::Backend::Flux,
        template: Some("flux-pro-1.1"),
        params: &json!({ "prompt": "a fox" }),
        workflow: &payload,
        backend_url: None,
    };
    let id = store.insert_job(new).await.unwrap().id;
    let (status, answer) = app
        .post_json(&format!("/api/jobs/{id}/again"), &json!({}))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "validation_failed");
    assert!(
        answer["error"]["details"]["fields"]["backend"].is_string(),
        "{answer}"
    );
    assert!(
        comfy.received_prompts().is_empty(),
        "nothing reached ComfyUI"
    );
}
