use super::*;

#[test]
fn the_built_in_templates_load() {
    let templates = Templates::builtin();
    let names: Vec<&str> = templates.names().collect();
    assert_eq!(names, ["sd35-t2i", "sdxl-i2i", "sdxl-t2i", "svd-v2v"]);
}

#[test]
fn a_folder_adds_and_replaces_templates_and_names_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let builtin = Templates::builtin();
    let mut manifest = builtin.get("sdxl-t2i").unwrap().manifest.clone();
    manifest.name = "my-sdxl".into();
    std::fs::write(
        dir.path().join("my-sdxl.manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("my-sdxl.json"),
        builtin.get("sdxl-t2i").unwrap().workflow.to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.manifest.json"), "{").unwrap();
    let (templates, problems) = Templates::with_folder(dir.path());
    assert!(templates.get("my-sdxl").is_some());
    assert!(templates.get("sdxl-t2i").is_some(), "built-ins stay");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("broken.manifest.json"));
}

/// Found by `properties`: a folder's manifest could target a link (`"model": ["4", 0]`), and any value then
/// replaced the link, changing the graph. Such a template is refused when loaded.
#[test]
fn a_folder_template_that_targets_a_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = json!({"1": {"class_type": "KSampler", "inputs": {"in0": ["1", 0]}}});
    let manifest = json!({
        "name": "random", "title": "Random", "output": "image",
        "params": {"a": {"type": "string", "required": false, "targets": [["1", "in0"]]}},
    });
    std::fs::write(dir.path().join("random.json"), workflow.to_string()).unwrap();
    std::fs::write(
        dir.path().join("random.manifest.json"),
        manifest.to_string(),
    )
    .unwrap();
    let (templates, problems) = Templates::with_folder(dir.path());
    assert!(templates.get("random").is_none());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("a link"), "{problems:?}");
}

#[test]
fn parameters_land_in_their_targets_and_nowhere_else() {
    let templates = Templates::builtin();
    let template = templates.get("sdxl-t2i").unwrap();
    let params = json!({ "prompt": "a lighthouse", "steps": 12, "seed": 18446744073709551615u64 });
    let workflow = templates.instantiate("sdxl-t2i", &params, None).unwrap();
    for (key, value) in [
        ("prompt", json!("a lighthouse")),
        ("steps", json!(12)),
        ("seed", json!(18446744073709551615u64)),
    ] {
        for (node, input) in &template.manifest.params[key].targets {
            assert_eq!(workflow[node]["inputs"][input], value, "{key}");
        }
    }
    // The graph's shape is the template's: same nodes, same classes, same links.
    let shape = |w: &Value| {
        w.as_object()
            .unwrap()
            .iter()
            .map(|(id, n)| (id.clone(), n["class_type"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&workflow), shape(&template.workflow));
}

#[test]
fn every_problem_is_named() {
    let templates = Templates::builtin();
    let params = json!({ "steps": 0, "cfg": "high", "width": 1001, "colour": "red" });
    let problems = templates
        .instantiate("sdxl-t2i", &params, None)
        .unwrap_err();
    for field in [
        "params.prompt",
        "params.steps",
        "params.cfg",
        "params.width",
        "params.colour",
    ] {
        assert!(
            problems.contains_key(field),
            "{field} missing from {problems:?}"
        );
    }
    let problems = templates.instantiate("nope", &json!({}), None).unwrap_err();
    assert!(problems["template"].as_str().unwrap().contains("sdxl-t2i"));

    let lists = ModelLists {
        checkpoints: vec!["other.safetensors".into()],
        ..Default::default()
    };
    let problems = templates
        .instantiate("sdxl-t2i", &json!({"prompt": "x"}), Some(&lists))
        .unwrap_err();
    assert!(
        problems["params.checkpoint"]
            .as_str()
            .unwrap()
            .contains("other.safetensors"),
        "{problems:?}"
    );
}
