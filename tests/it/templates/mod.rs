//! The bundled API-format workflow templates (`workflows/api/*.json`) and their manifests, checked against
//! the real node definitions of ComfyUI 0.3.64 (`tests/fixtures/comfyui/object_info.json`).
//!
//! No server is started: a template that would fail ComfyUI's own prompt validation, or a manifest that
//! points at an input the template does not have, fails here. What Orchestrator checks of a template itself (the
//! manifest's shape, its targets, its defaults) is asked of Orchestrator's own loader; this module adds only what the
//! recorded node definitions can tell.

mod manifest_checks;
mod node_checks;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use orchestrator::jobs::templates::Templates;
use serde_json::{Value, json};

use self::manifest_checks::check_manifest;
use self::node_checks::check_workflow;

const EXPECTED_TEMPLATES: [&str; 4] = ["sdxl-t2i", "sd35-t2i", "sdxl-i2i", "svd-v2v"];
const MANIFEST_SUFFIX: &str = ".manifest.json";

// --------------------------------------------------------------------------- loading

fn api_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/api")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn object_info() -> Value {
    read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/comfyui/object_info.json"),
    )
}

/// Every `workflows/api/<name>.json` that is not a manifest, as (name, workflow), sorted by name.
fn templates() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let dir = api_dir();
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if !file.ends_with(".json") || file.ends_with(MANIFEST_SUFFIX) {
            continue;
        }
        let name = file.trim_end_matches(".json").to_owned();
        out.push((name, read_json(&path)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn manifest_path(name: &str) -> PathBuf {
    api_dir().join(format!("{name}{MANIFEST_SUFFIX}"))
}

fn template(name: &str) -> Value {
    read_json(&api_dir().join(format!("{name}.json")))
}

fn manifest(name: &str) -> Value {
    read_json(&manifest_path(name))
}

fn assert_no_errors(errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{} problem(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
}

// --------------------------------------------------------------------------- tests

#[test]
fn the_four_standard_templates_exist() {
    let names: Vec<String> = templates().into_iter().map(|(n, _)| n).collect();
    for expected in EXPECTED_TEMPLATES {
        assert!(
            names.iter().any(|n| n == expected),
            "workflows/api/{expected}.json is missing (found {names:?})"
        );
        assert!(
            manifest_path(expected).is_file(),
            "workflows/api/{expected}{MANIFEST_SUFFIX} is missing"
        );
    }
}

#[test]
fn every_template_is_valid_against_the_node_definitions() {
    let info = object_info();
    let mut errors = Vec::new();
    for (name, wf) in templates() {
        errors.extend(check_workflow(&name, &wf, &info));
    }
    assert_no_errors(&errors);
}

#[test]
fn every_template_has_a_consistent_manifest() {
    let info = object_info();
    let builtin = Templates::builtin();
    let mut errors = Vec::new();
    for (name, wf) in templates() {
        if !manifest_path(&name).is_file() {
            errors.push(format!("{name}: no {name}{MANIFEST_SUFFIX}"));
            continue;
        }
        // The copy compiled into the binary loads too (a built-in that does not parse is only logged).
        if builtin.get(&name).is_none() {
            errors.push(format!("{name}: not among the built-in templates"));
        }
        errors.extend(check_manifest(&name, &wf, &manifest(&name), &info));
    }
    assert_no_errors(&errors);
}

#[test]
fn every_manifest_has_a_template() {
    for entry in std::fs::read_dir(api_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(MANIFEST_SUFFIX) {
            assert!(
                api_dir().join(format!("{name}.json")).is_file(),
                "{file} has no template {name}.json"
            );
        }
    }
}

#[test]
fn the_manifests_expose_the_expected_parameters() {
    let expect: [(&str, &str, &[&str]); 4] = [
        (
            "sdxl-t2i",
            "image",
            &[
                "prompt",
                "negative",
                "seed",
                "steps",
                "cfg",
                "sampler",
                "scheduler",
                "width",
                "height",
                "checkpoint",
                "filename_prefix",
            ],
        ),
        (
            "sd35-t2i",
            "image",
            &[
                "prompt",
                "negative",
                "seed",
                "steps",
                "cfg",
                "sampler",
                "scheduler",
                "width",
                "height",
                "checkpoint",
                "clip_l",
                "clip_g",
                "t5xxl",
                "shift",
                "filename_prefix",
            ],
        ),
        (
            "sdxl-i2i",
            "image",
            &[
                "image",
                "prompt",
                "negative",
                "seed",
                "steps",
                "cfg",
                "sampler",
                "scheduler",
                "denoise",
                "checkpoint",
                "filename_prefix",
            ],
        ),
        (
            "svd-v2v",
            "video",
            &[
                "image",
                "seed",
                "steps",
                "cfg",
                "sampler",
                "scheduler",
                "width",
                "height",
                "frames",
                "fps",
                "motion_bucket_id",
                "checkpoint",
                "filename_prefix",
            ],
        ),
    ];
    for (name, output, params) in expect {
        let m = manifest(name);
        assert_eq!(m["output"], output, "{name}: output");
        let keys: BTreeSet<&str> = m["params"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            params.iter().copied().collect::<BTreeSet<_>>(),
            "{name}: parameter names"
        );
    }
    // SVD's fps drives both the conditioning and the saved animation.
    let svd = manifest("svd-v2v");
    assert_eq!(
        svd["params"]["fps"]["targets"].as_array().unwrap().len(),
        2,
        "svd-v2v: fps must have two targets"
    );
    assert!(
        svd["params"].get("prompt").is_none(),
        "svd-v2v has no text prompt"
    );
}

/// The checks above must be able to fail: break a valid template in known ways and expect each to be named.
#[test]
fn the_checks_catch_broken_templates() {
    let info = object_info();
    let good = template("sdxl-t2i");
    assert_no_errors(&check_workflow("sdxl-t2i", &good, &info));

    type Mutation = fn(&mut Value);
    let cases: [(&str, Mutation, &str); 10] = [
        (
            "link index past the outputs",
            |w| w["8"]["inputs"]["vae"] = json!(["4", 3]),
            "node 8 (VAEDecode) input `vae`",
        ),
        (
            "link to the wrong output type",
            |w| w["8"]["inputs"]["vae"] = json!(["4", 1]),
            "expects VAE but link [\"4\", 1] gives CLIP",
        ),
        (
            "integer link id",
            |w| w["3"]["inputs"]["model"] = json!([4, 0]),
            "node 3 (KSampler) input `model`: link source id must be a string",
        ),
        (
            "link to a missing node",
            |w| w["3"]["inputs"]["model"] = json!(["99", 0]),
            "link source node 99 does not exist",
        ),
        (
            "missing required input",
            |w| {
                w["3"]["inputs"]
                    .as_object_mut()
                    .unwrap()
                    .remove("scheduler");
            },
            "node 3 (KSampler) input `scheduler`: required",
        ),
        (
            "out-of-range literal",
            |w| w["3"]["inputs"]["denoise"] = json!(1.5),
            "node 3 (KSampler) input `denoise`: 1.5 is above the node's max",
        ),
        (
            "unknown combo value",
            |w| w["3"]["inputs"]["sampler_name"] = json!("euler_magic"),
            "node 3 (KSampler) input `sampler_name`",
        ),
        (
            "unknown class",
            |w| w["5"]["class_type"] = json!("EmptyLatentImag"),
            "node 5 (EmptyLatentImag): class_type",
        ),
        (
            "no output node",
            |w| {
                w.as_object_mut().unwrap().remove("9");
            },
            "no output node",
        ),
        (
            "float in an INT input",
            |w| w["3"]["inputs"]["steps"] = json!(30.5),
            "node 3 (KSampler) input `steps`: 30.5 is not a valid INT",
        ),
    ];
    for (what, mutate, expected) in cases {
        let mut wf = good.clone();
        mutate(&mut wf);
        let errors = check_workflow("sdxl-t2i", &wf, &info);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{what}: expected an error containing {expected:?}, got {errors:?}"
        );
    }

    let good_manifest = manifest("sdxl-t2i");
    assert_no_errors(&check_manifest("sdxl-t2i", &good, &good_manifest, &info));
    let cases: [(&str, Mutation, &str); 7] = [
        (
            "default differs from the template",
            |m| m["params"]["steps"]["default"] = json!(25),
            "param `steps` -> node 3 input `steps`: the template has 30",
        ),
        (
            "target is a link",
            |m| m["params"]["steps"]["targets"] = json!([["3", "model"]]),
            "parameter steps targets 3.model, which is a link, not a literal",
        ),
        (
            "target node missing",
            |m| m["params"]["steps"]["targets"] = json!([["42", "steps"]]),
            "parameter steps targets 42.steps, which the workflow lacks",
        ),
        (
            "undeclared input",
            |m| m["params"]["steps"]["targets"] = json!([["3", "stepz"]]),
            "KSampler does not declare an input `stepz`",
        ),
        (
            "range beyond the node's",
            |m| m["params"]["cfg"]["max"] = json!(150.0),
            "param `cfg` -> node 3 input `cfg`: param max 150.0 is above the node's max",
        ),
        (
            "choice default not an option",
            |m| m["params"]["sampler"]["default"] = json!("nope"),
            "param `sampler`: default \"nope\"",
        ),
        (
            "multiple_of does not divide",
            |m| m["params"]["width"]["multiple_of"] = json!(7),
            "params.width: must be a multiple of 7",
        ),
    ];
    for (what, mutate, expected) in cases {
        let mut m = good_manifest.clone();
        mutate(&mut m);
        let errors = check_manifest("sdxl-t2i", &good, &m, &info);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{what}: expected an error containing {expected:?}, got {errors:?}"
        );
    }
}
