//! The node definitions of the recorded `object_info`, and a template's workflow checked against them as ComfyUI's
//! prompt validation would.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Number, Value};

// --------------------------------------------------------------------------- node definitions

/// What an input declaration accepts.
pub(super) enum Kind {
    /// A type name: "INT", "FLOAT", "STRING", "BOOLEAN", "MODEL", "*", "IMAGE,MASK", ...
    Typed(String),
    /// A combo: V1 `[[options...], {...}]` or V3 `["COMBO", {"options": [...]}]`.
    Combo(Vec<Value>),
}

pub(super) struct InputDef {
    pub(super) kind: Kind,
    opts: Map<String, Value>,
}

impl InputDef {
    pub(super) fn type_name(&self) -> &str {
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
pub(super) fn input_def(info: &Value, class: &str, input: &str) -> Option<InputDef> {
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

pub(super) fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Compares two JSON numbers exactly when both are integers (seeds go up to 2^64-1), else as f64.
pub(super) fn num_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    let (Value::Number(a), Value::Number(b)) = (a, b) else {
        return None;
    };
    match (as_int(a), as_int(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Equality of a template literal and a manifest default: numbers compare by value (6 == 6.0).
pub(super) fn same_value(a: &Value, b: &Value) -> bool {
    match num_cmp(a, b) {
        Some(ord) => ord == Ordering::Equal,
        None => a == b,
    }
}

fn is_integer(v: &Value) -> bool {
    matches!(v, Value::Number(n) if as_int(n).is_some())
}

/// Checks that `value` lies within the node definition's `min`/`max` (when it declares them).
pub(super) fn within_def(value: &Value, def: &InputDef) -> Result<(), String> {
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
pub(super) fn check_workflow(name: &str, wf: &Value, info: &Value) -> Vec<String> {
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
