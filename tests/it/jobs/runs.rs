//! A job from its request to its outputs: run, refused with every field named, and its files kept and served.

use std::time::Duration;

use orchestrator::client::Events;
use serde_json::{Value, json};
use testkit::fake_comfy::{FakeComfy, OUTPUT_PNG};

use super::{job, submit, workflow};
use crate::support::{TestApp, error_code};

#[tokio::test]
async fn a_workflow_runs_to_success_with_its_output_on_disk() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;

    let response = submit(&app, json!({ "backend": "comfy", "workflow": workflow(1) })).await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // Accepted by ComfyUI; the follower may already have seen it start.
    assert!(
        matches!(created["status"].as_str(), Some("submitted" | "running")),
        "{created}"
    );

    // Follow it live: the event stream ends when the job does.
    let events = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let events = tokio::time::timeout(Duration::from_secs(10), Events::of(events).collect())
        .await
        .expect("the stream ends");
    let states: Vec<String> = events
        .iter()
        .map(|event| event.json().unwrap()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("succeeded"),
        "{states:?}"
    );

    let done = job(&app, &id).await;
    assert_eq!(done["progress"], 100.0);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    let outputs = done["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    let output = &outputs[0];
    assert!(output["name"].as_str().unwrap().starts_with("fixture_"));
    assert_eq!(output["content_type"], "image/png");
    assert_eq!(output["size"], OUTPUT_PNG.len());

    let on_disk = std::fs::read(
        app.data_dir
            .join("outputs")
            .join(&id)
            .join(output["name"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(
        on_disk, OUTPUT_PNG,
        "the file on disk is the bytes ComfyUI served"
    );
    let served = app
        .http
        .get(app.url(output["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.bytes().await.unwrap().as_ref(), OUTPUT_PNG);

    let listed: Value = app.get_json("/api/jobs?status=succeeded").await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    let missing = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/outputs/..%2F..%2Forchestrator.db")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// Two SaveImage nodes with prefixes `a/x` and `b/x` each write `x_00001_.png`, in different subfolders (ComfyUI
/// counts per folder): the job keeps both files, each with its own bytes' name.
#[tokio::test]
async fn outputs_with_one_name_in_two_subfolders_are_both_kept() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let mut graph = workflow(7);
    graph["3"]["inputs"]["filename_prefix"] = json!("a/x");
    graph["4"] = json!({ "class_type": "SaveImage",
                         "inputs": { "filename_prefix": "b/x", "images": ["2", 0] } });
    let response = submit(&app, json!({ "workflow": graph })).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = app.wait_for_job(&id, "succeeded").await;
    let mut names: Vec<&str> = done["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b-x_00001_.png", "x_00001_.png"], "{done}");
    let dir = app.data_dir.join("outputs").join(&id);
    for output in done["outputs"].as_array().unwrap() {
        let served = app
            .http
            .get(app.url(output["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200);
        assert_eq!(served.bytes().await.unwrap().as_ref(), OUTPUT_PNG);
        assert!(dir.join(output["name"].as_str().unwrap()).is_file());
    }
    // Both were fetched from their own subfolder.
    let views: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/view")
        .filter_map(|r| r.query)
        .collect();
    assert!(views.iter().any(|q| q.contains("subfolder=a")), "{views:?}");
    assert!(views.iter().any(|q| q.contains("subfolder=b")), "{views:?}");
}

#[tokio::test]
async fn bad_requests_are_422_naming_each_field() {
    let fake = FakeComfy::start_with_models(&[("checkpoints", "mine.safetensors")]).await;
    let app = TestApp::spawn(&fake.url()).await;

    let cases = [
        (json!({ "template": "nope" }), "template"),
        (
            json!({ "template": "sdxl-t2i", "params": { "steps": 0 } }),
            "params.prompt",
        ),
        (
            json!({ "template": "sdxl-t2i", "params": { "prompt": "x", "steps": 100000 } }),
            "params.steps",
        ),
        (
            json!({ "template": "sdxl-t2i", "params": { "prompt": "x" } }),
            "params.checkpoint",
        ),
        (
            json!({ "template": "sdxl-t2i", "params": { "prompt": "x", "checkpoint": "mine.safetensors", "hue": 1 } }),
            "params.hue",
        ),
        (json!({ "workflow": [] }), "workflow"),
        (
            json!({ "workflow": { "1": { "inputs": {} } } }),
            "workflow.1.class_type",
        ),
        (
            json!({ "backend": "dall-e", "workflow": workflow(2) }),
            "backend",
        ),
        (json!({}), "template"),
    ];
    for (body, field) in cases {
        let response = submit(&app, body.clone()).await;
        assert_eq!(response.status(), 422, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(error_code(&answer), "validation_failed");
        assert!(
            answer["error"]["details"]["fields"][field].is_string(),
            "{field} not named for {body}: {answer}"
        );
    }
    assert!(
        fake.requests().iter().all(|r| r.path != "/prompt"),
        "nothing invalid reached ComfyUI"
    );
    let listed: Value = app.get_json("/api/jobs").await;
    assert_eq!(
        listed["jobs"],
        json!([]),
        "no job recorded for a request that was refused"
    );
}

#[tokio::test]
async fn comfy_validation_errors_reach_the_job_and_the_answer() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    // A class ComfyUI does not list is refused before anything is sent: it might be a paid node of a custom
    // package, and is not assumed free.
    let unknown = json!({ "1": { "class_type": "NoSuchNode", "inputs": {} } });
    let response = submit(&app, json!({ "workflow": unknown })).await;
    assert_eq!(response.status(), 422);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_code(&answer), "validation_failed");
    assert!(
        answer["error"]["details"]["fields"]["workflow.1.class_type"]
            .as_str()
            .is_some_and(|m| m.contains("NoSuchNode")),
        "{answer}"
    );
    assert!(
        fake.received_prompts().is_empty(),
        "nothing was sent to ComfyUI"
    );

    // ComfyUI's own refusal of a workflow reaches the job and the answer.
    let mut bad_link = testkit::fake_comfy::no_model_workflow();
    bad_link["3"]["inputs"]
        .as_object_mut()
        .unwrap()
        .remove("images");
    let response = submit(&app, json!({ "workflow": bad_link })).await;
    assert_eq!(response.status(), 422);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_code(&answer), "comfy_rejected", "{answer}");
    let id = answer["error"]["details"]["job_id"].as_str().unwrap();
    let failed = job(&app, id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "comfy_rejected");

    let mut missing_model = testkit::fake_comfy::ksampler_workflow();
    missing_model["4"]["inputs"]["ckpt_name"] = json!("absent.safetensors");
    let answer: Value = submit(&app, json!({ "workflow": missing_model }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["error"]["details"]["node_errors"]["4"]["errors"][0]["type"], "value_not_in_list",
        "{answer}"
    );
}

#[tokio::test]
async fn a_template_job_runs_the_sampler_graph() {
    let fake = FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    let app = TestApp::spawn(&fake.url()).await;
    let listed: Value = app.get_json("/api/templates").await;
    let names: Vec<&str> = listed["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sd35-t2i", "sdxl-i2i", "sdxl-t2i", "svd-v2v"]);
    let response = submit(&app, json!({ "template": "sdxl-t2i", "params": { "prompt": "a lighthouse at dusk", "seed": 42 } })).await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(done["template"], "sdxl-t2i");
    assert_eq!(done["params"]["prompt"], "a lighthouse at dusk");
    assert_eq!(done["outputs"].as_array().unwrap().len(), 1, "{done}");

    // What ComfyUI received is the template with the parameters in place.
    let posted = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/prompt" && r.method == "POST")
        .count();
    assert_eq!(posted, 1);
}

#[tokio::test]
async fn an_input_image_is_uploaded_to_comfy_for_img2img() {
    use base64::Engine;
    let fake = FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    let app = TestApp::spawn(&fake.url()).await;
    let image = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(OUTPUT_PNG)
    );
    let params = json!({ "prompt": "the same scene at night", "image": image });
    let response = submit(&app, json!({ "template": "sdxl-i2i", "params": params })).await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;

    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let (name, size) = uploads.iter().next().unwrap();
    assert_eq!(*size, OUTPUT_PNG.len() as u64, "the image arrived whole");
    assert_eq!(
        done["params"]["image"],
        format!("upload:{name}"),
        "the store keeps a note, not the data"
    );

    for bad in [
        "data:text/plain;base64,aGk=",
        "data:image/png;base64,***",
        "data:image/png,raw",
        // A header smuggled in the type would reach the multipart part sent to ComfyUI.
        "data:image/png\r\nX-Injected: yes;base64,aGk=",
        "data:image/;base64,aGk=",
    ] {
        let params = json!({ "prompt": "x", "image": bad });
        let response = submit(&app, json!({ "template": "sdxl-i2i", "params": params })).await;
        assert_eq!(response.status(), 422, "{bad}");
        let answer: Value = response.json().await.unwrap();
        assert!(
            answer["error"]["details"]["fields"]["params.image"].is_string(),
            "{answer}"
        );
    }
}

/// An output that became a link out of the outputs folder (`outputs/<job>/x.png -> secret`) is not served: the
/// name the job recorded is resolved, links included, and must stay inside the folder. A link to another file of
/// the folder still is.
#[cfg(unix)]
#[tokio::test]
async fn an_output_replaced_by_a_link_out_of_the_folder_is_not_served() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let response = submit(&app, json!({ "workflow": workflow(7) })).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = app.wait_for_job(&id, "succeeded").await;
    let output = &done["outputs"][0];
    let url = output["url"].as_str().unwrap().to_owned();
    let file = app
        .data_dir
        .join("outputs")
        .join(&id)
        .join(output["name"].as_str().unwrap());

    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "password").unwrap();
    std::fs::rename(&file, file.with_extension("kept")).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();
    let served = app.http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(served.status(), 404);
    assert_eq!(
        error_code(&served.json::<Value>().await.unwrap()),
        "output_not_found"
    );

    // The job's folder itself a link out (to a folder with a file of that name): refused as well.
    let folder = app.data_dir.join("outputs").join(&id);
    std::fs::remove_file(&file).unwrap();
    std::fs::copy(file.with_extension("kept"), &file).unwrap();
    std::fs::rename(&folder, outside.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("moved"), &folder).unwrap();
    assert_eq!(
        app.http.get(app.url(&url)).send().await.unwrap().status(),
        404
    );

    // A link inside the outputs folder is followed.
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(outside.path().join("moved"), &folder).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(file.with_extension("kept").file_name().unwrap(), &file).unwrap();
    let served = app.http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap().as_ref(), OUTPUT_PNG);
}
