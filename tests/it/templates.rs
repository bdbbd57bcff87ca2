//! The bundled API-format workflow templates (`workflows/api/*.json`) and their manifests, checked against
//! the real node definitions of ComfyUI 0.3.64 (`tests/fixtures/comfyui/object_info.json`).
//!
//! No server is started: a template that would fail ComfyUI's own prompt validation, or a manifest that
//! points at an input the template does not have, fails here.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value, json};

const EXPECTED_TEMPLATES: [&str; 4] = ["sdxl-t2i", "sd35-t2i", "sdxl-i2i", "svd-v2v"];
const PARAM_TYPES: [&str; 6] = ["string", "int", "float", "choice", "model", "image"];
const MODEL_FOLDERS: [&str; 8] = [
    "checkpoints",
    "loras",
    "vae",
    "clip",
    "clip_vision",
    "diffusion_models",
    "upscale_models",
    "controlnet",
];
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

// --------------------------------------------------------------------------- node definitions

/// What an input declaration accepts.
enum Kind {
    /// A type name: "INT", "FLOAT", "STRING", "BOOLEAN", "MODEL", "*", "IMAGE,MASK", ...
    Typed(String),
    /// A combo: V1 `[[options...], {...}]` or V3 `["COMBO", {"options": [...]}]`.
    Combo(Vec<Value>),
}

struct InputDef {
    kind: Kind,
    opts: Map<String, Value>,
}

impl InputDef {
    fn type_name(&self) -> &str {
        match &self.kind {
            Kind::Typed(t) => t,
            Kind::Combo(_) => "COMBO",
        }
    }
}

fn parse_input_def(spec: &Value) -> Option<InputDef> {
    let spec = spec.as_array()?;
    let opts = spec
        .get(1)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let kind = match spec.first()? {
        Value::Array(options) => Kind::Combo(options.clone()),
        Value::String(t) if t == "COMBO" => Kind::Combo(
            opts.get("options")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        ),
        Value::String(t) => Kind::Typed(t.clone()),
        _ => return None,
    };
    Some(InputDef { kind, opts })
}

/// The declaration of `input` on `class` (required or optional), if the node declares it.
fn input_def(info: &Value, class: &str, input: &str) -> Option<InputDef> {
    let inputs = info.get(class)?.get("input")?;
    ["required", "optional"]
        .iter()
        .find_map(|section| inputs.get(section).and_then(|s| s.get(input)))
        .and_then(parse_input_def)
}

fn required_inputs(info: &Value, class: &str) -> Vec<String> {
    info[class]["input"]["required"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn outputs(info: &Value, class: &str) -> Vec<String> {
    info[class]["output"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| match t {
                    Value::String(s) => s.clone(),
                    // A V1 combo output is the list of options itself.
                    _ => "COMBO".to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// ComfyUI's type match: "*" on either side matches; otherwise the comma-separated sets must meet.
fn types_match(declared: &str, produced: &str) -> bool {
    if declared == "*" || produced == "*" || declared == produced {
        return true;
    }
    let declared: BTreeSet<&str> = declared.split(',').map(str::trim).collect();
    produced
        .split(',')
        .map(str::trim)
        .any(|t| declared.contains(t))
}

// --------------------------------------------------------------------------- numbers

fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Compares two JSON numbers exactly when both are integers (seeds go up to 2^64-1), else as f64.
fn num_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    let (Value::Number(a), Value::Number(b)) = (a, b) else {
        return None;
    };
    match (as_int(a), as_int(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Equality of a template literal and a manifest default: numbers compare by value (6 == 6.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match num_cmp(a, b) {
        Some(ord) => ord == Ordering::Equal,
        None => a == b,
    }
}

fn is_integer(v: &Value) -> bool {
    matches!(v, Value::Number(n) if as_int(n).is_some())
}

/// Checks that `value` lies within the node definition's `min`/`max` (when it declares them).
fn within_def(value: &Value, def: &InputDef) -> Result<(), String> {
    if let Some(min) = def.opts.get("min")
        && num_cmp(value, min) == Some(Ordering::Less)
    {
        return Err(format!("{value} is below the node's min {min}"));
    }
    if let Some(max) = def.opts.get("max")
        && num_cmp(value, max) == Some(Ordering::Greater)
    {
        return Err(format!("{value} is above the node's max {max}"));
    }
    Ok(())
}

// --------------------------------------------------------------------------- workflow checks

/// Every problem of an API-format workflow, each naming the template, node id and input.
fn check_workflow(name: &str, wf: &Value, info: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(nodes) = wf.as_object() else {
        return vec![format!("{name}: the workflow is not a JSON object")];
    };
    if nodes.is_empty() {
        errors.push(format!("{name}: the workflow has no nodes"));
    }
    let mut has_output_node = false;
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();

    for (id, node) in nodes {
        let Some(class) = node.get("class_type").and_then(Value::as_str) else {
            errors.push(format!("{name}: node {id} has no string class_type"));
            continue;
        };
        let at = format!("{name}: node {id} ({class})");
        if node
            .pointer("/_meta/title")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errors.push(format!("{at}: no _meta.title"));
        }
        let Some(def) = info.get(class) else {
            errors.push(format!("{at}: class_type `{class}` is not in object_info"));
            continue;
        };
        if def["output_node"].as_bool() == Some(true) {
            has_output_node = true;
        }
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            errors.push(format!("{at}: `inputs` is not an object"));
            continue;
        };
        for required in required_inputs(info, class) {
            if !inputs.contains_key(&required) {
                errors.push(format!(
                    "{at} input `{required}`: required by the node definition but missing"
                ));
            }
        }
        for (input, value) in inputs {
            let at = format!("{at} input `{input}`");
            let Some(decl) = input_def(info, class, input) else {
                errors.push(format!("{at}: not declared by the node definition"));
                continue;
            };
            match value {
                Value::Array(link) => {
                    let (Some(src), Some(idx)) = (link.first(), link.get(1)) else {
                        errors.push(format!(
                            "{at}: a link must be [\"<node id>\", <output index>], got {value}"
                        ));
                        continue;
                    };
                    if link.len() != 2 {
                        errors.push(format!(
                            "{at}: a link must have exactly 2 elements, got {value}"
                        ));
                    }
                    let Some(src) = src.as_str() else {
                        errors.push(format!("{at}: link source id must be a string, got {src}"));
                        continue;
                    };
                    let Some(idx) = idx.as_u64() else {
                        errors.push(format!(
                            "{at}: link output index must be a non-negative integer, got {idx}"
                        ));
                        continue;
                    };
                    let Some(src_class) = nodes.get(src).and_then(|n| n["class_type"].as_str())
                    else {
                        errors.push(format!("{at}: link source node {src} does not exist"));
                        continue;
                    };
                    edges.entry(id.as_str()).or_default().push(src);
                    if info.get(src_class).is_none() {
                        continue; // reported on the source node itself
                    }
                    let outs = outputs(info, src_class);
                    let Some(produced) = usize::try_from(idx).ok().and_then(|i| outs.get(i)) else {
                        errors.push(format!(
                            "{at}: link [\"{src}\", {idx}] but {src_class} has only {} output(s) {outs:?}",
                            outs.len()
                        ));
                        continue;
                    };
                    if !types_match(decl.type_name(), produced) {
                        errors.push(format!(
                            "{at}: expects {} but link [\"{src}\", {idx}] gives {produced} ({src_class})",
                            decl.type_name()
                        ));
                    }
                }
                literal => match &decl.kind {
                    Kind::Combo(options) => {
                        if !literal.is_string() {
                            errors
                                .push(format!("{at}: combo value must be a string, got {literal}"));
                        } else if !options.is_empty() && !options.contains(literal) {
                            errors.push(format!(
                                "{at}: {literal} is not one of the options {options:?}"
                            ));
                        }
                    }
                    Kind::Typed(t) => match t.as_str() {
                        "INT" | "FLOAT" => {
                            if (t == "INT" && !is_integer(literal)) || !literal.is_number() {
                                errors.push(format!("{at}: {literal} is not a valid {t}"));
                            } else if let Err(e) = within_def(literal, &decl) {
                                errors.push(format!("{at}: {e}"));
                            }
                        }
                        "STRING" if !literal.is_string() => {
                            errors.push(format!("{at}: {literal} is not a string"));
                        }
                        "BOOLEAN" if !literal.is_boolean() => {
                            errors.push(format!("{at}: {literal} is not a boolean"));
                        }
                        "STRING" | "BOOLEAN" | "*" => {}
                        other => errors.push(format!(
                            "{at}: expects a link of type {other}, got literal {literal}"
                        )),
                    },
                },
            }
        }
    }
    if !has_output_node {
        errors.push(format!(
            "{name}: no output node (SaveImage, SaveAnimatedWEBP, ...)"
        ));
    }
    if let Some(id) = find_cycle(&edges) {
        errors.push(format!("{name}: node {id} is part of a cycle"));
    }
    errors
}

/// A node on a cycle of the link graph, if any.
fn find_cycle<'a>(edges: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<&'a str> {
    fn visit<'a>(
        n: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, bool>, // false = on the stack, true = done
    ) -> Option<&'a str> {
        match state.get(n) {
            Some(true) => return None,
            Some(false) => return Some(n),
            None => {}
        }
        state.insert(n, false);
        for &next in edges.get(n).into_iter().flatten() {
            if let Some(hit) = visit(next, edges, state) {
                return Some(hit);
            }
        }
        state.insert(n, true);
        None
    }
    let mut state = BTreeMap::new();
    edges.keys().find_map(|&n| visit(n, edges, &mut state))
}

// --------------------------------------------------------------------------- manifest checks

/// Every problem of a template's manifest, each naming the template, parameter, node id and input.
fn check_manifest(name: &str, wf: &Value, manifest: &Value, info: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let at = format!("{name}.manifest.json");
    if manifest["name"].as_str() != Some(name) {
        errors.push(format!(
            "{at}: `name` is {} but the template is {name}",
            manifest["name"]
        ));
    }
    for field in ["title", "description"] {
        if manifest[field].as_str().is_none_or(str::is_empty) {
            errors.push(format!("{at}: `{field}` must be a non-empty string"));
        }
    }
    if !matches!(manifest["output"].as_str(), Some("image" | "video")) {
        errors.push(format!(
            "{at}: `output` must be \"image\" or \"video\", got {}",
            manifest["output"]
        ));
    }
    let Some(params) = manifest["params"].as_object().filter(|p| !p.is_empty()) else {
        errors.push(format!("{at}: `params` must be a non-empty object"));
        return errors;
    };
    let mut targeted: BTreeMap<(String, String), &str> = BTreeMap::new();

    for (pname, p) in params {
        let at = format!("{at} param `{pname}`");
        let Some(ptype) = p["type"].as_str().filter(|t| PARAM_TYPES.contains(t)) else {
            errors.push(format!(
                "{at}: `type` must be one of {PARAM_TYPES:?}, got {}",
                p["type"]
            ));
            continue;
        };
        let default = p.get("default");
        let required = match p.get("required") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                errors.push(format!("{at}: `required` must be a boolean, got {other}"));
                false
            }
        };
        if required && default.is_some() {
            errors.push(format!("{at}: a required parameter cannot have a default"));
        }
        if !required && default.is_none() {
            errors.push(format!("{at}: an optional parameter needs a default"));
        }
        if let Some(d) = p.get("description")
            && d.as_str().is_none_or(str::is_empty)
        {
            errors.push(format!("{at}: `description` must be a non-empty string"));
        }

        // Per-type rules.
        match ptype {
            "string" => {
                if default.is_some_and(|d| !d.is_string()) {
                    errors.push(format!("{at}: default must be a string"));
                }
            }
            "image" => {
                if !required || default.is_some() {
                    errors.push(format!(
                        "{at}: an image parameter must be required, with no default"
                    ));
                }
            }
            "model" => {
                if !p["folder"]
                    .as_str()
                    .is_some_and(|f| MODEL_FOLDERS.contains(&f))
                {
                    errors.push(format!(
                        "{at}: `folder` must be one of {MODEL_FOLDERS:?}, got {}",
                        p["folder"]
                    ));
                }
                if default.is_some_and(|d| d.as_str().is_none_or(str::is_empty)) {
                    errors.push(format!("{at}: default must be a file name"));
                }
            }
            "choice" => match p["choices_from"].as_array().map(Vec::as_slice) {
                Some([Value::String(class), Value::String(input)]) => {
                    match input_def(info, class, input) {
                        Some(InputDef {
                            kind: Kind::Combo(options),
                            ..
                        }) if !options.is_empty() => {
                            if let Some(d) = default
                                && !options.contains(d)
                            {
                                errors.push(format!(
                                    "{at}: default {d} is not one of {class}.{input}'s options"
                                ));
                            }
                        }
                        Some(_) => errors.push(format!(
                            "{at}: choices_from {class}.{input} is not a combo with options"
                        )),
                        None => errors.push(format!(
                            "{at}: choices_from {class}.{input} does not exist in object_info"
                        )),
                    }
                }
                _ => errors.push(format!(
                    "{at}: `choices_from` must be [\"<class>\", \"<input>\"]"
                )),
            },
            "int" | "float" => {
                let (min, max) = (p.get("min"), p.get("max"));
                let int = ptype == "int";
                for (field, v) in [("min", min), ("max", max), ("default", default)] {
                    match v {
                        None if field != "default" => {
                            errors.push(format!("{at}: `{field}` is missing"))
                        }
                        Some(v) if (int && !is_integer(v)) || (!int && !v.is_number()) => {
                            errors.push(format!("{at}: `{field}` {v} is not a valid {ptype}"));
                        }
                        _ => {}
                    }
                }
                if let (Some(min), Some(max)) = (min, max) {
                    if num_cmp(min, max) == Some(Ordering::Greater) {
                        errors.push(format!("{at}: min {min} is above max {max}"));
                    }
                    if let Some(d) = default
                        && (num_cmp(d, min) == Some(Ordering::Less)
                            || num_cmp(d, max) == Some(Ordering::Greater))
                    {
                        errors.push(format!("{at}: default {d} is outside [{min}, {max}]"));
                    }
                }
                if let Some(m) = p.get("multiple_of") {
                    match (
                        m.as_u64().filter(|&m| m > 0),
                        default.and_then(Value::as_u64),
                    ) {
                        (None, _) => {
                            errors.push(format!("{at}: `multiple_of` must be a positive integer"))
                        }
                        (Some(m), Some(d)) if d % m != 0 => {
                            errors.push(format!(
                                "{at}: multiple_of {m} does not divide the default {d}"
                            ));
                        }
                        _ => {}
                    }
                }
            }
            _ => unreachable!(),
        }
        if ptype != "int" && p.get("multiple_of").is_some() {
            errors.push(format!(
                "{at}: `multiple_of` only applies to int parameters"
            ));
        }

        // Targets.
        let Some(targets) = p["targets"].as_array().filter(|t| !t.is_empty()) else {
            errors.push(format!(
                "{at}: `targets` must be a non-empty list of [node_id, input]"
            ));
            continue;
        };
        for target in targets {
            let (Some(node_id), Some(input)) = (target[0].as_str(), target[1].as_str()) else {
                errors.push(format!(
                    "{at}: target {target} must be [\"<node id>\", \"<input>\"]"
                ));
                continue;
            };
            let at = format!("{at} -> node {node_id} input `{input}`");
            if let Some(other) = targeted.insert((node_id.to_owned(), input.to_owned()), pname) {
                errors.push(format!("{at}: also targeted by param `{other}`"));
            }
            let Some(node) = wf.get(node_id) else {
                errors.push(format!(
                    "{at}: node {node_id} does not exist in the template"
                ));
                continue;
            };
            let class = node["class_type"].as_str().unwrap_or_default();
            let Some(decl) = input_def(info, class, input) else {
                errors.push(format!("{at}: {class} does not declare an input `{input}`"));
                continue;
            };
            let Some(literal) = node["inputs"].get(input) else {
                errors.push(format!("{at}: the template does not set this input"));
                continue;
            };
            if literal.is_array() {
                errors.push(format!("{at}: holds a link {literal}, not a literal"));
                continue;
            }
            if let Some(d) = default
                && !same_value(literal, d)
            {
                errors.push(format!(
                    "{at}: the template has {literal} but the default is {d}"
                ));
            }
            let fits = match (ptype, &decl.kind) {
                ("string", Kind::Typed(t)) => t == "STRING",
                ("int", Kind::Typed(t)) => t == "INT" || t == "FLOAT",
                ("float", Kind::Typed(t)) => t == "FLOAT",
                ("choice" | "model" | "image", Kind::Combo(_)) => true,
                _ => false,
            };
            if !fits {
                errors.push(format!(
                    "{at}: a {ptype} parameter cannot set an input of type {}",
                    decl.type_name()
                ));
            }
            if ptype == "choice"
                && let (Kind::Combo(target_opts), Some([Value::String(c), Value::String(i)])) =
                    (&decl.kind, p["choices_from"].as_array().map(Vec::as_slice))
                && let Some(InputDef {
                    kind: Kind::Combo(from),
                    ..
                }) = input_def(info, c, i)
                && &from != target_opts
            {
                errors.push(format!(
                    "{at}: its options differ from choices_from {c}.{i}"
                ));
            }
            if matches!(ptype, "int" | "float") {
                for bound in ["min", "max"] {
                    if let Some(v) = p.get(bound)
                        && let Err(e) = within_def(v, &decl)
                    {
                        errors.push(format!("{at}: param {bound} {e}"));
                    }
                }
            }
        }
    }
    errors
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
    let mut errors = Vec::new();
    for (name, wf) in templates() {
        if !manifest_path(&name).is_file() {
            errors.push(format!("{name}: no {name}{MANIFEST_SUFFIX}"));
            continue;
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
            "node 3 input `model`: holds a link",
        ),
        (
            "target node missing",
            |m| m["params"]["steps"]["targets"] = json!([["42", "steps"]]),
            "node 42 does not exist",
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
            "multiple_of 7 does not divide the default 1024",
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
