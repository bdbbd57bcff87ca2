//! A template's manifest: what Orchestrator's own loader checks, then what only the recorded node definitions can
//! tell.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use orchestrator::comfy::models::SOURCES;
use orchestrator::jobs::templates::{Manifest, ParamKind, Templates};
use serde_json::{Value, json};

use super::MANIFEST_SUFFIX;
use super::node_checks::{InputDef, Kind, as_int, input_def, num_cmp, same_value, within_def};

// --------------------------------------------------------------------------- manifest checks

/// What Orchestrator itself checks of a template, run on this one as on a template of `TEMPLATES_DIR`: loaded from
/// a folder (the manifest's shape and types, every target a literal input of the workflow), then instantiated with
/// its defaults (each of its parameter's type, within its bounds, a multiple of its step). Answers every problem it
/// names.
fn product_problems(name: &str, wf: &Value, manifest: &Value) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{name}.json")), wf.to_string()).unwrap();
    std::fs::write(
        dir.path().join(format!("{name}{MANIFEST_SUFFIX}")),
        manifest.to_string(),
    )
    .unwrap();
    let (templates, problems) = Templates::with_folder(dir.path());
    if !problems.is_empty() {
        return problems;
    }
    let loaded = manifest["name"]
        .as_str()
        .expect("a manifest Orchestrator loaded has a name");
    let template = templates.get(loaded).expect("the template just loaded");
    let Err(problems) = templates.instantiate(loaded, &json!({}), None) else {
        return Vec::new();
    };
    problems
        .into_iter()
        .filter(|(key, problem)| {
            // A required parameter has no default: that it is asked for is as it should be.
            let required = key
                .strip_prefix("params.")
                .and_then(|param| template.manifest.params.get(param))
                .is_some_and(|param| param.required);
            !(required && problem.as_str() == Some("required"))
        })
        .map(|(key, problem)| {
            format!(
                "{name}{MANIFEST_SUFFIX}: {key}: {}",
                problem.as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Every problem of a template's manifest, each naming the template, parameter, node id and input: what Orchestrator
/// checks ([`product_problems`]), then what only the recorded node definitions can tell, and the conventions the
/// bundled templates keep.
pub(super) fn check_manifest(
    name: &str,
    wf: &Value,
    manifest: &Value,
    info: &Value,
) -> Vec<String> {
    let mut errors = product_problems(name, wf, manifest);
    let Ok(manifest) = serde_json::from_value::<Manifest>(manifest.clone()) else {
        // Orchestrator named why it does not load.
        return errors;
    };
    let at = format!("{name}{MANIFEST_SUFFIX}");
    if manifest.name != name {
        errors.push(format!(
            "{at}: `name` is {:?} but the template is {name}",
            manifest.name
        ));
    }
    for (field, text) in [
        ("title", &manifest.title),
        ("description", &manifest.description),
    ] {
        if text.is_empty() {
            errors.push(format!("{at}: `{field}` must be a non-empty string"));
        }
    }
    if !matches!(manifest.output.as_str(), "image" | "video") {
        errors.push(format!(
            "{at}: `output` must be \"image\" or \"video\", got {:?}",
            manifest.output
        ));
    }
    if manifest.params.is_empty() {
        errors.push(format!("{at}: `params` must be a non-empty object"));
        return errors;
    }
    let folders: Vec<&str> = SOURCES.iter().map(|(folder, _, _)| *folder).collect();
    let mut targeted: BTreeMap<(&str, &str), &str> = BTreeMap::new();

    for (pname, p) in &manifest.params {
        let at = format!("{at} param `{pname}`");
        let ptype = format!("{:?}", p.kind).to_lowercase();
        let default = p.default.as_ref();
        if p.required && default.is_some() {
            errors.push(format!("{at}: a required parameter cannot have a default"));
        }
        if !p.required && default.is_none() {
            errors.push(format!("{at}: an optional parameter needs a default"));
        }
        if p.description.as_deref() == Some("") {
            errors.push(format!("{at}: `description` must be a non-empty string"));
        }

        // Per-type rules.
        match p.kind {
            ParamKind::String => {}
            ParamKind::Image => {
                if !p.required || default.is_some() {
                    errors.push(format!(
                        "{at}: an image parameter must be required, with no default"
                    ));
                }
            }
            ParamKind::Model => {
                if !p.folder.as_deref().is_some_and(|f| folders.contains(&f)) {
                    errors.push(format!(
                        "{at}: `folder` must be one of {folders:?}, got {:?}",
                        p.folder
                    ));
                }
            }
            ParamKind::Choice => match &p.choices_from {
                Some((class, input)) => match input_def(info, class, input) {
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
                },
                None => errors.push(format!(
                    "{at}: `choices_from` must be [\"<class>\", \"<input>\"]"
                )),
            },
            ParamKind::Int | ParamKind::Float => {
                for (field, bound) in [("min", &p.min), ("max", &p.max)] {
                    match bound {
                        None => errors.push(format!("{at}: `{field}` is missing")),
                        Some(n) if p.kind == ParamKind::Int && as_int(n).is_none() => {
                            errors.push(format!("{at}: `{field}` {n} is not a valid int"));
                        }
                        Some(_) => {}
                    }
                }
                if let (Some(min), Some(max)) = (&p.min, &p.max)
                    && num_cmp(&Value::Number(min.clone()), &Value::Number(max.clone()))
                        == Some(Ordering::Greater)
                {
                    errors.push(format!("{at}: min {min} is above max {max}"));
                }
                if p.multiple_of == Some(0) {
                    errors.push(format!("{at}: `multiple_of` must be a positive integer"));
                }
            }
        }
        if p.kind != ParamKind::Int && p.multiple_of.is_some() {
            errors.push(format!(
                "{at}: `multiple_of` only applies to int parameters"
            ));
        }

        // Targets.
        if p.targets.is_empty() {
            errors.push(format!(
                "{at}: `targets` must be a non-empty list of [node_id, input]"
            ));
        }
        for (node_id, input) in &p.targets {
            let at = format!("{at} -> node {node_id} input `{input}`");
            if let Some(other) = targeted.insert((node_id.as_str(), input.as_str()), pname.as_str())
            {
                errors.push(format!("{at}: also targeted by param `{other}`"));
            }
            // A node the workflow lacks, an input it does not set and a link are Orchestrator's to name.
            let Some(node) = wf.get(node_id.as_str()) else {
                continue;
            };
            let class = node["class_type"].as_str().unwrap_or_default();
            let Some(decl) = input_def(info, class, input) else {
                errors.push(format!("{at}: {class} does not declare an input `{input}`"));
                continue;
            };
            let Some(literal) = node["inputs"]
                .get(input.as_str())
                .filter(|literal| !literal.is_array() && !literal.is_object())
            else {
                continue;
            };
            if let Some(d) = default
                && !same_value(literal, d)
            {
                errors.push(format!(
                    "{at}: the template has {literal} but the default is {d}"
                ));
            }
            let fits = match (p.kind, &decl.kind) {
                (ParamKind::String, Kind::Typed(t)) => t == "STRING",
                (ParamKind::Int, Kind::Typed(t)) => t == "INT" || t == "FLOAT",
                (ParamKind::Float, Kind::Typed(t)) => t == "FLOAT",
                (ParamKind::Choice | ParamKind::Model | ParamKind::Image, Kind::Combo(_)) => true,
                _ => false,
            };
            if !fits {
                errors.push(format!(
                    "{at}: a {ptype} parameter cannot set an input of type {}",
                    decl.type_name()
                ));
            }
            if p.kind == ParamKind::Choice
                && let (Kind::Combo(target_opts), Some((c, i))) = (&decl.kind, &p.choices_from)
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
            if matches!(p.kind, ParamKind::Int | ParamKind::Float) {
                for (bound, v) in [("min", &p.min), ("max", &p.max)] {
                    if let Some(v) = v
                        && let Err(e) = within_def(&Value::Number(v.clone()), &decl)
                    {
                        errors.push(format!("{at}: param {bound} {e}"));
                    }
                }
            }
        }
    }
    errors
}
