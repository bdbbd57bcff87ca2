//! Property tests: no parameter value changes a workflow's shape, and only values of the declared kind get in.

use std::collections::BTreeSet;

use super::*;
use proptest::prelude::*;

/// Text that looks like graph structure, mixed with arbitrary text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", " ", "\t", "a lighthouse", "[\"4\", 0]", "[\"4\",0]", "4", "\"4\"",
            "{\"class_type\": \"SaveImage\", \"inputs\": {}}", "{\"4\": {\"inputs\": {}}}",
            "${prompt}", "%s", "\u{0}", "\u{202e}", "../../etc/passwd", "null", "true", "1e400",
        ])
        .prop_map(str::to_owned),
        2 => any::<String>(),
        1 => Just("x".repeat(100_000)),
    ]
}

/// JSON values of every type: huge and odd numbers, link-shaped arrays, nested objects.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(|f| json!(f)),
        prop::sample::select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e308),
            json!(-0.0),
            json!(0.5),
            json!(1.0),
            json!(8),
            json!(1024),
            json!(["4", 0]),
            json!(["3", 0]),
            json!([4, 0]),
            json!({"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}),
        ]),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_0-9]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value a user would plausibly send for `param` (often valid), or anything at all.
fn value_for(param: &Param) -> BoxedStrategy<Value> {
    let number = |n: &Option<serde_json::Number>, or: f64| {
        n.as_ref()
            .and_then(serde_json::Number::as_f64)
            .unwrap_or(or)
    };
    let (low, high) = (number(&param.min, -1e6), number(&param.max, 1e6));
    let plausible = match param.kind {
        ParamKind::Int => {
            let step = param.multiple_of.unwrap_or(1).max(1) as i128;
            let (low, high) = (low.max(-1e15) as i128, high.min(1e15) as i128);
            (low..=high.max(low))
                .prop_map(move |n| json!((n - n % step) as i64))
                .boxed()
        }
        ParamKind::Float => (low..=high.max(low)).prop_map(|f| json!(f)).boxed(),
        ParamKind::String => text().prop_map(Value::from).boxed(),
        ParamKind::Choice | ParamKind::Model | ParamKind::Image => {
            "[a-z_.]{1,12}".prop_map(Value::from).boxed()
        }
    };
    prop_oneof![3 => plausible, 2 => json_value()].boxed()
}

/// Parameters for `template`: each of its own perhaps given, now and then one it does not have.
fn params_for(manifest: &Manifest) -> BoxedStrategy<Value> {
    let given: Vec<_> = manifest
        .params
        .iter()
        .map(|(key, param)| {
            (
                Just(key.clone()),
                prop::option::weighted(0.7, value_for(param)),
            )
        })
        .collect();
    let stranger = prop::option::weighted(0.1, ("[a-z_]{1,8}", json_value()));
    (given, stranger)
        .prop_map(|(given, stranger)| {
            let mut params: Map<String, Value> = given
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?)))
                .collect();
            if let Some((key, value)) = stranger {
                params.insert(key, value);
            }
            Value::Object(params)
        })
        .boxed()
}

/// Whether `value` is one `param` takes: the test's own reading of the manifest rules.
fn acceptable(param: &Param, value: &Value) -> bool {
    let within = |n: f64| {
        param
            .min
            .as_ref()
            .and_then(|m| m.as_f64())
            .is_none_or(|m| n >= m)
            && param
                .max
                .as_ref()
                .and_then(|m| m.as_f64())
                .is_none_or(|m| n <= m)
    };
    match param.kind {
        ParamKind::String => value.is_string(),
        ParamKind::Choice | ParamKind::Model | ParamKind::Image => {
            value.as_str().is_some_and(|s| !s.trim().is_empty())
        }
        ParamKind::Float => value.as_f64().is_some_and(within),
        ParamKind::Int => {
            let Some(n) = value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from))
            else {
                return false;
            };
            let bound = |b: &Option<serde_json::Number>| {
                b.as_ref().and_then(|b| {
                    b.as_i64()
                        .map(i128::from)
                        .or_else(|| b.as_u64().map(i128::from))
                })
            };
            bound(&param.min).is_none_or(|m| n >= m)
                && bound(&param.max).is_none_or(|m| n <= m)
                && param
                    .multiple_of
                    .filter(|s| *s > 1)
                    .is_none_or(|s| n % i128::from(s) == 0)
        }
    }
}

/// The value each target ends up with: the last parameter (in the manifest's order) that writes it.
fn expected_targets(manifest: &Manifest, params: &Value) -> BTreeMap<(String, String), Value> {
    let mut expected = BTreeMap::new();
    for (key, param) in &manifest.params {
        let value = params
            .get(key)
            .filter(|v| !v.is_null())
            .or(param.default.as_ref());
        if let Some(value) = value {
            for target in &param.targets {
                expected.insert(target.clone(), value.clone());
            }
        }
    }
    expected
}

/// The graph's shape is the template's: the same node ids, classes, input keys and links; only targets
/// changed, each to the value of the declared kind it was given.
fn assert_same_shape(
    template: &Template,
    params: &Value,
    produced: &Value,
) -> Result<(), TestCaseError> {
    let original = template
        .workflow
        .as_object()
        .expect("a workflow is an object");
    let produced = produced
        .as_object()
        .expect("an instantiated workflow is an object");
    prop_assert_eq!(
        original.keys().collect::<Vec<_>>(),
        produced.keys().collect::<Vec<_>>()
    );
    let targets = expected_targets(&template.manifest, params);
    for (id, node) in original {
        let out = &produced[id];
        prop_assert_eq!(&out["class_type"], &node["class_type"], "node {}", id);
        let fields = |n: &Value| {
            n.as_object()
                .map(|o| o.keys().cloned().collect::<BTreeSet<_>>())
        };
        prop_assert_eq!(fields(out), fields(node), "node {}", id);
        for (field, value) in node.as_object().into_iter().flatten() {
            if field != "inputs" {
                prop_assert_eq!(&out[field], value, "node {}.{}", id, field);
            }
        }
        let Some(inputs) = node["inputs"].as_object() else {
            prop_assert_eq!(&out["inputs"], &node["inputs"]);
            continue;
        };
        let out_inputs = out["inputs"].as_object().expect("inputs stay an object");
        prop_assert_eq!(
            inputs.keys().collect::<Vec<_>>(),
            out_inputs.keys().collect::<Vec<_>>(),
            "node {}",
            id
        );
        for (input, value) in inputs {
            let now = &out_inputs[input];
            match targets.get(&(id.clone(), input.clone())) {
                None => prop_assert_eq!(now, value, "{}.{} is no target", id, input),
                Some(expected) => {
                    prop_assert!(!value.is_array(), "{id}.{input}: a link was a target");
                    prop_assert!(
                        !now.is_array() && !now.is_object(),
                        "{id}.{input} became {now}"
                    );
                    prop_assert_eq!(now, expected, "{}.{}", id, input);
                }
            }
        }
    }
    Ok(())
}

/// The outcome is right: accepted exactly when every value is acceptable, the graph's shape kept; refused
/// naming the parameters that are wrong.
fn assert_instantiated(
    templates: &Templates,
    name: &str,
    params: &Value,
) -> Result<(), TestCaseError> {
    let template = templates.get(name).unwrap();
    let manifest = &template.manifest;
    let mut wrong = BTreeSet::new();
    for key in params.as_object().into_iter().flat_map(|p| p.keys()) {
        if !manifest.params.contains_key(key) {
            wrong.insert(key.clone());
        }
    }
    for (key, param) in &manifest.params {
        match params
            .get(key)
            .filter(|v| !v.is_null())
            .or(param.default.as_ref())
        {
            None if param.required => {
                wrong.insert(key.clone());
            }
            Some(value) if !acceptable(param, value) => {
                wrong.insert(key.clone());
            }
            _ => {}
        }
    }
    match templates.instantiate(name, params, None) {
        Ok(workflow) => {
            prop_assert!(
                wrong.is_empty(),
                "accepted although {wrong:?} are wrong: {params}"
            );
            assert_same_shape(template, params, &workflow)?;
        }
        Err(problems) => {
            let named: BTreeSet<String> = problems
                .keys()
                .map(|k| {
                    k.strip_prefix("params.")
                        .expect("a parameter is named")
                        .to_owned()
                })
                .collect();
            prop_assert_eq!(named, wrong, "{}", params);
        }
    }
    Ok(())
}

fn builtin_case() -> impl Strategy<Value = (String, Value)> {
    let templates = Templates::builtin();
    let names: Vec<String> = templates.names().map(str::to_owned).collect();
    prop::sample::select(names).prop_flat_map(move |name| {
        let manifest = templates.get(&name).unwrap().manifest.clone();
        (Just(name), params_for(&manifest))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_value_never_changes_a_built_in_graph((name, params) in builtin_case()) {
        assert_instantiated(&Templates::builtin(), &name, &params)?;
    }
}

/// A random template as a folder would hold it: nodes with literal and link inputs, parameters of every kind
/// targeting inputs of either sort.
fn random_template() -> impl Strategy<Value = (Value, Value)> {
    let literal = prop_oneof![
        any::<i64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(|f| json!(f)),
        "[a-z ]{0,8}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ];
    let node = (
        prop::sample::select(vec!["KSampler", "CLIPTextEncode", "SaveImage", "LoadImage"]),
        prop::collection::vec(
            prop_oneof![literal.prop_map(Ok), (1usize..6, 0u64..3).prop_map(Err),],
            1..4,
        ),
    );
    prop::collection::vec(node, 1..6).prop_flat_map(|nodes| {
        let n = nodes.len();
        let mut workflow = Map::new();
        let mut inputs_of = Vec::new();
        for (index, (class, inputs)) in nodes.into_iter().enumerate() {
            let id = (index + 1).to_string();
            let mut map = Map::new();
            for (k, input) in inputs.into_iter().enumerate() {
                let value = match input {
                    Ok(literal) => literal,
                    Err((source, output)) => json!([(1 + source % n).to_string(), output]),
                };
                map.insert(format!("in{k}"), value);
                inputs_of.push((id.clone(), format!("in{k}")));
            }
            workflow.insert(
                id.clone(),
                json!({"class_type": class, "inputs": map, "_meta": {"title": id}}),
            );
        }
        let param = (
            prop::sample::select(vec!["string", "int", "float", "choice", "model", "image"]),
            any::<bool>(),
            prop::option::weighted(0.5, json_value()),
            prop::option::of(-100i64..100),
            prop::option::of(0u64..5),
            prop::collection::vec(prop::sample::select(inputs_of), 1..3),
        );
        (
            Just(Value::Object(workflow)),
            prop::collection::btree_map("[a-z]{1,6}", param, 0..4),
        )
            .prop_map(|(workflow, params)| {
                let params: Map<String, Value> = params
                    .into_iter()
                    .map(|(key, (kind, required, default, min, step, targets))| {
                        let mut param =
                            json!({"type": kind, "required": required, "targets": targets});
                        if let Some(default) = default {
                            param["default"] = default;
                        }
                        if let Some(min) = min {
                            param["min"] = json!(min);
                            param["max"] = json!(min + 1000);
                        }
                        if let Some(step) = step {
                            param["multiple_of"] = json!(step);
                        }
                        (key, param)
                    })
                    .collect();
                let manifest = json!({
                    "name": "random", "title": "Random", "output": "image", "params": params,
                });
                (workflow, manifest)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A folder's template either is refused when loaded, or keeps its shape for any parameters.
    #[test]
    fn a_value_never_changes_a_folder_templates_graph(
        (workflow, manifest) in random_template(),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("random.json"), workflow.to_string()).unwrap();
        std::fs::write(dir.path().join("random.manifest.json"), manifest.to_string()).unwrap();
        let (templates, _) = Templates::with_folder(dir.path());
        let Some(template) = templates.get("random") else {
            return Ok(());
        };
        // Parameters drawn from the loaded manifest, with a runner seeded by this case.
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            ProptestConfig::default(),
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &{
                    let mut bytes = [0u8; 32];
                    bytes[..8].copy_from_slice(&seed.to_le_bytes());
                    bytes
                },
            ),
        );
        let strategy = params_for(&template.manifest);
        for _ in 0..8 {
            let params = strategy.new_tree(&mut runner).unwrap().current();
            assert_instantiated(&templates, "random", &params)?;
        }
    }
}
