//! A node's `price_badge` (newer ComfyUI: `{"engine": "jsonata", "depends_on": {"widgets": [...]}, "expr": "…"}`,
//! Comfy-Org/ComfyUI#11582) read as a safe upper bound, without running its expression: JSONata cannot be held to a
//! time or memory limit from outside (a function rebound under an allowed name, a self-doubling structure, a
//! backtracking pattern), and a badge comes from whatever custom node a backend has installed.
//!
//! The bound is the highest dollar figure the expression can show (every number after a key ending in `usd`:
//! `usd`, `min_usd`/`max_usd`, lists), times each count the price depends on: a widget it names whose name says it
//! counts (`number_of_images`, `n`, `batch_size`, `duration`, …) at the node's literal value. A count fed by a link
//! cannot be read before the run, so such a node cannot be priced in advance.

use serde_json::{Map, Value};

/// What a badge says a node costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadgePrice {
    /// At most this, in millionths of a dollar.
    AtMost(i64),
    /// The price depends on a count the graph does not fix (a linked widget).
    Unknown,
}

/// Widget names that count what a price is multiplied by: images, items, seconds, frames.
fn counts(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "n"
        || [
            "number", "num_", "count", "batch", "duration", "seconds", "frames", "length",
        ]
        .iter()
        .any(|word| name.contains(word))
}

/// The bound, for a node whose literal inputs are `inputs`; `None` when the badge shows no dollar figure.
pub fn price(badge: &Value, inputs: &Map<String, Value>) -> Option<BadgePrice> {
    let highest = highest_figure(badge)?;
    let mut micros = (highest * 1_000_000.0).round() as i64;
    let widgets = badge
        .pointer("/depends_on/widgets")
        .and_then(Value::as_array);
    for widget in widgets.into_iter().flatten() {
        let Some(name) = widget.as_str().or_else(|| widget["name"].as_str()) else {
            continue;
        };
        if !counts(name) {
            continue;
        }
        match inputs.get(name) {
            Some(Value::Number(n)) => {
                let times = n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .unwrap_or(1.0)
                    .ceil()
                    .max(1.0);
                micros = micros.saturating_mul(times.min(1e9) as i64);
            }
            // A link (`["4", 0]`): its value comes with the run.
            Some(Value::Array(_)) => return Some(BadgePrice::Unknown),
            // Absent (ComfyUI's default) or not a number: counted once.
            _ => {}
        }
    }
    Some(BadgePrice::AtMost(micros))
}

/// Every number that follows a key ending in `usd` in the badge's expression (or the badge itself): the most it can
/// show.
fn highest_figure(badge: &Value) -> Option<f64> {
    let text = match badge.get("expr") {
        Some(Value::String(expr)) => expr.clone(),
        Some(other) => other.to_string(),
        None => badge.to_string(),
    };
    let mut best: Option<f64> = None;
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("usd") {
        let mut i = from + at + 3;
        from = i;
        // The key's closing quote (either kind), then the colon.
        while i < bytes.len() && matches!(bytes[i], b'"' | b'\'' | b' ' | b'\\') {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b':' {
            continue;
        }
        i += 1;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'[') {
            i += 1;
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map_or(text.len(), |n| i + n);
        if let Ok(value) = text[i..end].parse::<f64>()
            && value.is_finite()
        {
            best = Some(best.map_or(value, |b: f64| b.max(value)));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn inputs(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn a_badge_is_read_as_its_highest_figure() {
        let badge = json!({"engine": "jsonata", "depends_on": {"widgets": [{"name": "model", "type": "COMBO"}]},
            "expr": "model = 'a' ? {\"type\":\"range_usd\",\"min_usd\":0.02,\"max_usd\":0.08} : {\"type\":\"usd\",\"usd\":0.035}"});
        assert_eq!(
            price(&badge, &inputs(json!({"model": "a"}))),
            Some(BadgePrice::AtMost(80_000))
        );
        let plain = json!({"expr": "{'type': 'usd', 'usd': 1.5}"});
        assert_eq!(
            price(&plain, &Map::new()),
            Some(BadgePrice::AtMost(1_500_000))
        );
        assert_eq!(price(&json!({"expr": "'see the docs'"}), &Map::new()), None);
    }

    #[test]
    fn a_badge_that_multiplies_is_priced_at_the_nodes_count() {
        let badge = json!({"engine": "jsonata",
            "depends_on": {"widgets": [{"name": "number_of_images", "type": "INT"}]},
            "expr": "{\"type\":\"usd\",\"usd\": 0.033 * widgets.number_of_images}"});
        let ten = inputs(json!({"number_of_images": 10, "prompt": "p"}));
        assert_eq!(price(&badge, &ten), Some(BadgePrice::AtMost(330_000)));
        let per_second = json!({"depends_on": {"widgets": ["duration"]},
            "expr": "{\"type\":\"usd\",\"usd\": 0.05 * widgets.duration}"});
        assert_eq!(
            price(&per_second, &inputs(json!({"duration": 300}))),
            Some(BadgePrice::AtMost(15_000_000))
        );
        let linked = inputs(json!({"number_of_images": ["4", 0]}));
        assert_eq!(price(&badge, &linked), Some(BadgePrice::Unknown));
        // A widget that is not a count (a seed, a size) does not multiply.
        let seeded = json!({"depends_on": {"widgets": ["seed"]}, "expr": "{'usd': 0.04}"});
        assert_eq!(
            price(&seeded, &inputs(json!({"seed": 123456}))),
            Some(BadgePrice::AtMost(40_000))
        );
    }
}
