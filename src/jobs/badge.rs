//! ComfyUI's price badges, evaluated as its frontend evaluates them, with the node's own widget values: a node that
//! makes ten images is priced at ten (`comfy_api/latest/_io.py` `PriceBadge`; the frontend's
//! `useNodePricing.ts` builds the context and reads the result).
//!
//! A badge is `{"engine": "jsonata", "depends_on": {"widgets": [{name, type}], "inputs": [name], "input_groups":
//! [name]}, "expr": "…"}`. Its expression reads `widgets.<name>` (numbers as numbers, combo and text values trimmed
//! and lower-cased, a missing or linked one `null`), `inputs.<name>.connected` and `inputGroups.<name>` (how many
//! of the group's inputs are linked), and answers `{"type": "usd", "usd"}`, `{"type": "range_usd", "min_usd",
//! "max_usd"}`, `{"type": "list_usd", "usd": […]}` (alternatives) or text. The estimate is the highest figure.
//!
//! The expression comes from a backend's `/object_info`, a custom node's included. The evaluator's own time limit
//! does not stop one step that allocates (a range of millions, `$pad` to a huge width), so only what badges are
//! made of is evaluated: at most [`MAX_EXPR`] bytes, no ranges, no functions of its own, and only the built-in
//! functions of [`FUNCTIONS`], none of which makes more than its inputs hold; then its time and depth are limited
//! too. Whatever it cannot price is priced by the caller at the ceiling.

use serde_json::{Map, Value, json};

/// How long one badge may take, in milliseconds, and how deep its evaluation may go.
const TIME_LIMIT_MS: usize = 50;
const MAX_DEPTH: usize = 64;

/// The longest expression evaluated (ComfyUI's longest badges are about 2 KB).
const MAX_EXPR: usize = 8 * 1024;

/// The built-in functions ComfyUI's badges call, each bounded by the size of its inputs.
const FUNCTIONS: [&str; 24] = [
    "lookup",
    "contains",
    "round",
    "floor",
    "ceil",
    "abs",
    "string",
    "number",
    "boolean",
    "not",
    "exists",
    "substringBefore",
    "substringAfter",
    "substring",
    "lowercase",
    "uppercase",
    "trim",
    "length",
    "count",
    "sum",
    "max",
    "min",
    "keys",
    "join",
];

/// Whether `expr` is made only of what badges are made of (see the module's words).
fn bounded(expr: &str) -> bool {
    if expr.len() > MAX_EXPR
        || expr.contains("..")
        || expr.contains("function")
        || expr.contains('λ')
    {
        return false;
    }
    // Every `$name(` must be a call of one of the functions.
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_end);
        if after.trim_start().starts_with('(') && !FUNCTIONS.contains(&name) {
            return false;
        }
    }
    true
}

/// What a badge says a run of its node costs, with this node's inputs (API format: literals, or `[node, slot]`
/// links), in millionths of a dollar; `None` when it says no price (text, nothing, an error).
pub fn price(badge: &Value, inputs: &Map<String, Value>) -> Option<i64> {
    let expr = badge.get("expr")?.as_str().filter(|expr| bounded(expr))?;
    let context = context(badge.get("depends_on").unwrap_or(&Value::Null), inputs);
    let arena = bumpalo::Bump::new();
    let program = jsonata_rs::JsonAta::new(expr, &arena).ok()?;
    let answer = program
        .evaluate_timeboxed(
            Some(&context.to_string()),
            Some(MAX_DEPTH),
            Some(TIME_LIMIT_MS),
        )
        .ok()?;
    let answer: Value = serde_json::from_str(&answer.serialize(false)).ok()?;
    highest_usd(&answer)
        .filter(|usd| usd.is_finite() && *usd >= 0.0)
        .map(|usd| (usd * 1_000_000.0).round() as i64)
}

/// The largest whole number among the badge's numeric widgets as this node sets them (a count of images, of
/// seconds): what a price the badge cannot give is multiplied by. At least 1.
pub fn largest_count(badge: &Value, inputs: &Map<String, Value>) -> i64 {
    widgets(badge.get("depends_on").unwrap_or(&Value::Null))
        .filter(|(_, kind)| matches!(kind.as_str(), "INT" | "FLOAT"))
        .filter_map(|(name, _)| inputs.get(&name).and_then(Value::as_f64))
        .filter(|n| n.is_finite())
        .map(|n| n.ceil().min(1e6) as i64)
        .fold(1, i64::max)
}

/// The badge's widgets as `(name, type)`; a bare name has no type.
fn widgets(depends_on: &Value) -> impl Iterator<Item = (String, String)> + '_ {
    let list = depends_on.get("widgets").and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(|widget| match widget {
            Value::String(name) => Some((name.clone(), String::new())),
            Value::Object(spec) => {
                let name = spec.get("name")?.as_str()?.to_owned();
                let kind = spec.get("type").and_then(Value::as_str).unwrap_or_default();
                Some((name, kind.to_owned()))
            }
            _ => None,
        })
}

/// The document the expression reads: `{widgets, inputs, inputGroups}`.
fn context(depends_on: &Value, inputs: &Map<String, Value>) -> Value {
    let linked = |value: &Value| value.as_array().is_some_and(|link| link.len() == 2);
    let widget_values: Map<String, Value> = widgets(depends_on)
        .map(|(name, kind)| {
            let value = inputs
                .get(&name)
                .filter(|value| !linked(value))
                .map_or(Value::Null, |value| normalised(value, &kind));
            (name, value)
        })
        .collect();
    let names = |key: &str| {
        let list = depends_on.get(key).and_then(Value::as_array);
        list.into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let connected: Map<String, Value> = names("inputs")
        .into_iter()
        .map(|name| {
            let connected = inputs.get(&name).is_some_and(linked);
            (name, json!({ "connected": connected }))
        })
        .collect();
    let groups: Map<String, Value> = names("input_groups")
        .into_iter()
        .map(|group| {
            let prefix = format!("{group}.");
            let count = inputs
                .iter()
                .filter(|(name, value)| name.starts_with(&prefix) && linked(value))
                .count();
            (group, json!(count))
        })
        .collect();
    json!({ "widgets": widget_values, "inputs": connected, "inputGroups": groups })
}

/// A widget's value as the frontend hands it to the expression, by the widget's type.
fn normalised(value: &Value, kind: &str) -> Value {
    let text = |value: &Value| match value {
        Value::String(text) => text.trim().to_lowercase(),
        other => other.to_string().trim().to_lowercase(),
    };
    match kind {
        "INT" | "FLOAT" => match value {
            Value::Number(_) => value.clone(),
            Value::String(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map_or(Value::Null, |n| json!(n)),
            _ => Value::Null,
        },
        "BOOLEAN" => match value {
            Value::Bool(_) => value.clone(),
            Value::String(text) if text == "true" || text == "false" => json!(text == "true"),
            _ => Value::Null,
        },
        "COMBO" if value.is_number() || value.is_boolean() => value.clone(),
        _ => json!(text(value)),
    }
}

/// The highest dollar figure of a badge's answer; `None` for text or anything else.
fn highest_usd(answer: &Value) -> Option<f64> {
    let number = |key: &str| answer.get(key).and_then(Value::as_f64);
    match answer.get("type").and_then(Value::as_str) {
        Some("usd") | None => number("usd"),
        Some("range_usd") => match (number("min_usd"), number("max_usd")) {
            (Some(min), Some(max)) => Some(min.max(max)),
            (one, other) => one.or(other),
        },
        Some("list_usd") => answer
            .get("usd")?
            .as_array()?
            .iter()
            .filter_map(Value::as_f64)
            .reduce(f64::max),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// xAI's Grok image node (ComfyUI's `comfy_api_nodes/nodes_grok.py`): a rate by model and resolution, times
    /// the number of images.
    fn grok() -> Value {
        json!({"engine": "jsonata",
            "depends_on": {"widgets": [{"name": "model", "type": "COMBO"},
                {"name": "number_of_images", "type": "INT"}, {"name": "resolution", "type": "COMBO"},
                {"name": "quality", "type": "COMBO"}], "inputs": [], "input_groups": []},
            "expr": "(\n  $is1k := widgets.resolution = \"1k\";\n  $rate := widgets.model = \"grok-imagine-image-2.0\"\n    ? (widgets.quality = \"low\" ? ($is1k ? 0.04 : 0.06) : ($is1k ? 0.06 : 0.08))\n    : (widgets.model = \"grok-imagine-image-quality\"\n        ? ($is1k ? 0.05 : 0.07)\n        : ($contains(widgets.model, \"pro\") ? 0.07 : 0.02));\n  {\"type\":\"usd\",\"usd\": $rate * widgets.number_of_images}\n)"})
    }

    #[test]
    fn a_badge_that_multiplies_is_priced_with_the_nodes_own_count() {
        let ten = inputs(
            json!({"model": "grok-imagine-image-2.0", "number_of_images": 10,
            "resolution": "1K", "quality": "High", "prompt": "a kite"}),
        );
        assert_eq!(price(&grok(), &ten), Some(600_000), "10 × $0.06");
        let one = inputs(
            json!({"model": "grok-imagine-image-2.0", "number_of_images": 1,
            "resolution": "2K", "quality": "low"}),
        );
        assert_eq!(price(&grok(), &one), Some(60_000));
    }

    /// A count fed by a link is unknown when the workflow is judged: no price, and the caller's fallback is
    /// multiplied by the largest count the node sets itself.
    #[test]
    fn a_badge_that_cannot_be_priced_says_so() {
        let linked = inputs(
            json!({"model": "grok-imagine-image-2.0", "number_of_images": ["4", 0],
            "resolution": "1k", "quality": "high"}),
        );
        assert_eq!(price(&grok(), &linked), None);
        assert_eq!(largest_count(&grok(), &linked), 1);
        let ten = inputs(json!({"number_of_images": 10}));
        assert_eq!(largest_count(&grok(), &ten), 10);
        let text = json!({"expr": "{\"type\": \"text\", \"text\": \"see the docs\"}"});
        assert_eq!(price(&text, &Map::new()), None);
        assert_eq!(price(&json!({"expr": "(("}), &Map::new()), None);
    }

    #[test]
    fn ranges_and_lists_are_read_as_their_highest_figure() {
        let range = json!({"depends_on": {"widgets": [{"name": "n", "type": "INT"}]},
            "expr": "widgets.n > 1 ? {\"type\":\"range_usd\",\"min_usd\":0.02 * widgets.n,\"max_usd\":0.08 * widgets.n} : {\"type\":\"usd\",\"usd\":0.035}"});
        assert_eq!(price(&range, &inputs(json!({"n": 3}))), Some(240_000));
        assert_eq!(price(&range, &inputs(json!({"n": 1}))), Some(35_000));
        let list = json!({"expr": "{\"type\": \"list_usd\", \"usd\": [0.1, 0.4, 0.2]}"});
        assert_eq!(price(&list, &Map::new()), Some(400_000));
        let bare = json!({"expr": "{\"usd\": 1.5}"});
        assert_eq!(price(&bare, &Map::new()), Some(1_500_000));
    }

    #[test]
    fn the_context_is_the_frontends() {
        let badge = json!({"depends_on": {"widgets": [{"name": "size", "type": "COMBO"},
            {"name": "seconds", "type": "FLOAT"}, {"name": "loop", "type": "BOOLEAN"}, "bare"],
            "inputs": ["image", "mask"], "input_groups": ["refs"]}});
        let node = inputs(
            json!({"size": " 1024X1024 ", "seconds": "5", "loop": "true", "image": ["3", 0],
            "refs.a": ["5", 0], "refs.b": ["6", 0], "refs.c": "x"}),
        );
        assert_eq!(
            context(&badge["depends_on"], &node),
            json!({"widgets": {"size": "1024x1024", "seconds": 5.0, "loop": true, "bare": null},
                "inputs": {"image": {"connected": true}, "mask": {"connected": false}},
                "inputGroups": {"refs": 2}})
        );
    }

    /// What could run away or fill the memory in one step is not evaluated: a function of its own (recursion), a
    /// range, a function that makes more than it is given, a huge expression.
    #[test]
    fn only_what_badges_are_made_of_is_evaluated() {
        for expr in [
            "($f := function($n) { $f($n + 1) }; $f(0))",
            "{\"usd\": $count([1..5000000])}",
            "{\"usd\": $length($pad(\"\", 200000000))}",
            "{\"usd\": $eval(\"1\")}",
        ] {
            assert!(!bounded(expr), "{expr}");
            assert_eq!(price(&json!({ "expr": expr }), &Map::new()), None, "{expr}");
        }
        let long = format!("{{\"usd\": 1{}}}", " ".repeat(MAX_EXPR));
        assert_eq!(price(&json!({ "expr": long }), &Map::new()), None);
        assert!(bounded(grok()["expr"].as_str().unwrap()));
        assert!(bounded(
            "($n := $lookup(widgets, \"model.n\"); $max([$n, 1]) )"
        ));
    }
}
