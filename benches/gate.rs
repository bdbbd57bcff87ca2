//! The money gate's cost on a 100-node prompt: what the gateway adds to `POST /prompt` (read the JSON, remove the
//! Comfy.org credentials, look every node up, write the prompt again) and the lookup alone.
//! `cargo bench --bench gate`. Prints the median and the 99th percentile per prompt, in microseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::comfy::nodes::NodeCatalog;
use orchestrator::comfy::prompt;
use orchestrator::jobs::gate::Gate;
use orchestrator::money::confirm::Confirmer;
use serde_json::{Value, json};

const ROUNDS: usize = 20_000;

fn main() {
    let info: Value =
        serde_json::from_str(include_str!("../tests/fixtures/comfyui/object_info.json"))
            .expect("recorded object_info");
    let catalog = NodeCatalog::from_object_info(&info);
    let gate = Gate::new(
        Arc::new(Confirmer::new(Duration::from_secs(600))),
        true,
        1_000_000,
    );
    // A big graph of free nodes, each with a few literal inputs and a link, and one paid node at the end.
    let free = catalog.free_classes();
    let mut workflow = serde_json::Map::new();
    for i in 0..99 {
        workflow.insert(
            i.to_string(),
            json!({ "class_type": free[(i * 7) % free.len()], "_meta": { "title": format!("node {i}") },
                    "inputs": { "seed": 1234567 + i, "text": "a lighthouse on a cliff at dawn, volumetric light", "strength": 0.75,
                                "image": [(i.max(1) - 1).to_string(), 0] } }),
        );
    }
    workflow.insert(
        "99".into(),
        json!({ "class_type": "FluxProUltraImageNode", "inputs": { "prompt": "a harbour", "aspect_ratio": "16:9",
                "prompt_upsampling": false, "raw": false, "seed": 1 } }),
    );
    let body = serde_json::to_vec(&json!({ "prompt": workflow, "client_id": "editor",
        "extra_data": { "api_key_comfy_org": "k", "extra_pnginfo": { "workflow": { "nodes": [] } } } }))
    .unwrap();
    println!("prompt: 100 nodes, {} bytes", body.len());

    // What the gateway does to every prompt before forwarding it (a free one is forwarded right after).
    let free_body = |with_key: bool| {
        let mut value: Value = serde_json::from_slice(&body).unwrap();
        value["prompt"].as_object_mut().unwrap().remove("99");
        if !with_key {
            value["extra_data"]
                .as_object_mut()
                .unwrap()
                .remove("api_key_comfy_org");
        }
        serde_json::to_vec(&value).unwrap()
    };
    let gate_free = |body: &[u8]| {
        let prompt = prompt::read(body).unwrap();
        assert!(!catalog.any_paid(prompt.nodes.as_ref().unwrap()).unwrap());
        prompt.body.len()
    };
    let (plain, signed_in) = (free_body(false), free_body(true));
    let free = measure(|| gate_free(&plain));
    let with_key = measure(|| gate_free(&signed_in));
    // A paid one is then read whole, to name and price its paid nodes for the refusal.
    let paid = measure(|| {
        let prompt = prompt::read(&body).unwrap();
        assert!(catalog.any_paid(prompt.nodes.as_ref().unwrap()).unwrap());
        let value: Value = serde_json::from_slice(&prompt.body).unwrap();
        gate.assess(&catalog, &value["prompt"]).unwrap().nodes.len()
    });
    println!(
        "free prompt, the gate's work before forwarding (read, look every node up): median {:.1} µs, p99 {:.1} µs",
        free.0, free.1
    );
    println!(
        "the same from a signed-in editor (its Comfy.org key removed from extra_data): median {:.1} µs, p99 {:.1} µs",
        with_key.0, with_key.1
    );
    println!(
        "paid prompt, priced for its refusal: median {:.1} µs, p99 {:.1} µs",
        paid.0, paid.1
    );
}

/// Median and 99th percentile of `ROUNDS` runs, in microseconds.
fn measure<T>(mut work: impl FnMut() -> T) -> (f64, f64) {
    for _ in 0..1000 {
        std::hint::black_box(work());
    }
    let mut times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(work());
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[ROUNDS / 2], times[ROUNDS * 99 / 100])
}
