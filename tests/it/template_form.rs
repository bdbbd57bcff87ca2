//! The built-in templates' form metadata: every parameter has a label and help in both panel languages, a group
//! and a place in it; the size presets fit the template's own width and height rules.

use std::collections::BTreeSet;

use serde_json::Value;

const BUILTIN: [&str; 4] = ["sdxl-t2i", "sd35-t2i", "sdxl-i2i", "svd-v2v"];
const GROUPS: [&str; 4] = ["main", "size", "sampling", "advanced"];

fn manifest(name: &str) -> Value {
    let path = format!(
        "{}/workflows/api/{name}.manifest.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_parameter_reads_like_the_task_in_both_languages() {
    let mut problems = Vec::new();
    for name in BUILTIN {
        let manifest = manifest(name);
        let mut places = BTreeSet::new();
        for (param, spec) in manifest["params"].as_object().unwrap() {
            let at = format!("{name} `{param}`");
            for field in ["label", "help"] {
                for lang in ["en", "ru"] {
                    if spec[field][lang].as_str().is_none_or(str::is_empty) {
                        problems.push(format!("{at}: no {field}.{lang}"));
                    }
                }
            }
            if spec["label"]["en"] == spec["label"]["ru"] {
                problems.push(format!("{at}: the Russian label is the English one"));
            }
            if spec.get("description").is_some() {
                problems.push(format!("{at}: `description` repeats help.en"));
            }
            let group = spec["group"].as_str().unwrap_or_default();
            if !GROUPS.contains(&group) {
                problems.push(format!("{at}: group {group:?} is not one of {GROUPS:?}"));
            }
            let Some(order) = spec["order"].as_i64() else {
                problems.push(format!("{at}: no order"));
                continue;
            };
            if !places.insert((group.to_owned(), order)) {
                problems.push(format!(
                    "{at}: another parameter of {group} has order {order}"
                ));
            }
        }
        // What people change most comes first.
        for param in ["prompt", "negative", "image"] {
            let spec = &manifest["params"][param];
            if !spec.is_null() && spec["group"] != "main" {
                problems.push(format!("{name} `{param}` is not in main"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_size_presets_fit_the_templates_width_and_height() {
    for name in BUILTIN {
        let manifest = manifest(name);
        let params = &manifest["params"];
        let presets = manifest["size_presets"].as_array();
        if params["width"].is_null() {
            assert!(
                presets.is_none(),
                "{name}: presets without a width and height"
            );
            continue;
        }
        let presets = presets.unwrap_or_else(|| panic!("{name}: a size without presets"));
        assert!(presets.len() >= 2, "{name}");
        let fits = |param: &Value, n: u64| {
            n >= param["min"].as_u64().unwrap()
                && n <= param["max"].as_u64().unwrap()
                && n.is_multiple_of(param["multiple_of"].as_u64().unwrap_or(1))
        };
        let default = [
            params["width"]["default"].as_u64().unwrap(),
            params["height"]["default"].as_u64().unwrap(),
        ];
        assert!(
            presets
                .iter()
                .any(|p| p[0].as_u64() == Some(default[0]) && p[1].as_u64() == Some(default[1])),
            "{name}: the default size is a preset"
        );
        for preset in presets {
            let (w, h) = (preset[0].as_u64().unwrap(), preset[1].as_u64().unwrap());
            assert!(
                fits(&params["width"], w) && fits(&params["height"], h),
                "{name}: {w}×{h}"
            );
        }
    }
}
