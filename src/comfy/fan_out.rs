//! How many times ComfyUI runs each node of a workflow: once, unless the node is fed a list.
//!
//! ComfyUI 0.3.64 (`execution.py` `_async_map_node_over_list`) runs a node once per item of a list output it is fed
//! (`output_is_list`, e.g. `RebatchImages`, `RebatchLatents`), the shorter inputs' last item repeated, and a node
//! run over a list makes lists of its own outputs. So a paid node downstream of `EmptyImage(batch_size=4096) →
//! RebatchImages(1)` runs 4,096 times. The count is known where the graph fixes it (literal widget values, the
//! batch sources ComfyUI ships); a list whose length depends on a link or a node Orchestrator does not know is
//! [`Runs::Unknown`], and a run through such a node cannot be priced in advance.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::nodes::NodeCatalog;

/// How many times a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    Times(u64),
    Unknown,
}

impl Runs {
    fn max(self, other: Self) -> Self {
        match (self, other) {
            (Self::Times(a), Self::Times(b)) => Self::Times(a.max(b)),
            _ => Self::Unknown,
        }
    }
}

/// Nodes that make a batch of `batch_size` items (images, latents) from nothing.
const BATCH_SOURCES: [&str; 2] = ["EmptyImage", "EmptyLatentImage"];
/// Nodes that take a list whole (`INPUT_IS_LIST`) and cut its items into a list of batches of `batch_size`.
const REBATCHERS: [&str; 2] = ["RebatchImages", "RebatchLatents"];

/// What a node makes: `len` list items holding `items` images or latents in all; `mapped`: it ran over a list.
#[derive(Debug, Clone, Copy)]
struct Made {
    len: Runs,
    items: Runs,
    mapped: bool,
}

/// The runs of every node of an API-format workflow, by node id; a node it does not name runs once (the map is
/// empty for a workflow without a node that makes lists, as most are).
pub fn runs(catalog: &NodeCatalog, workflow: &Value) -> HashMap<String, Runs> {
    let Some(nodes) = workflow.as_object() else {
        return HashMap::new();
    };
    let makes_lists = nodes.values().any(|node| {
        node["class_type"]
            .as_str()
            .and_then(|class| catalog.get(class))
            .is_some_and(|class| class.output_is_list.contains(&true))
    });
    if !makes_lists {
        return HashMap::new();
    }
    let mut made = HashMap::new();
    for id in nodes.keys() {
        visit(id, catalog, nodes, &mut made, 0);
    }
    made.into_iter()
        .map(|(id, made)| {
            (
                id,
                if made.mapped {
                    made.len
                } else {
                    Runs::Times(1)
                },
            )
        })
        .collect()
}

fn visit(
    id: &str,
    catalog: &NodeCatalog,
    nodes: &Map<String, Value>,
    made: &mut HashMap<String, Made>,
    depth: usize,
) -> Made {
    let unknown = Made {
        len: Runs::Unknown,
        items: Runs::Unknown,
        mapped: true,
    };
    if let Some(known) = made.get(id) {
        return *known;
    }
    // A graph deeper than any real one, or a cycle (which ComfyUI refuses): counted as unknown.
    let Some(node) = nodes.get(id).filter(|_| depth < 512) else {
        return unknown;
    };
    made.insert(id.to_owned(), unknown);
    let class = node["class_type"].as_str().unwrap_or_default();
    let literal = |name: &str| match node["inputs"].get(name) {
        Some(value) => value
            .as_u64()
            .map_or(Runs::Unknown, |n| Runs::Times(n.max(1))),
        None => Runs::Times(1),
    };
    let mut fed = Vec::new();
    for value in node["inputs"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, v)| v)
    {
        let (Some(from), Some(slot)) = (value[0].as_str(), value[1].as_u64()) else {
            continue;
        };
        let upstream = visit(from, catalog, nodes, made, depth + 1);
        let from_class = nodes.get(from).and_then(|n| n["class_type"].as_str());
        let is_list = from_class
            .and_then(|class| catalog.get(class))
            .is_some_and(|class| class.output_is_list.get(slot as usize) == Some(&true));
        fed.push(if is_list || upstream.mapped {
            upstream
        } else {
            Made {
                len: Runs::Times(1),
                ..upstream
            }
        });
    }
    let items = fed.first().map_or(Runs::Times(1), |f| f.items);
    let result = if BATCH_SOURCES.contains(&class) {
        Made {
            len: Runs::Times(1),
            items: literal("batch_size"),
            mapped: false,
        }
    } else if REBATCHERS.contains(&class) {
        let len = match (items, literal("batch_size")) {
            (Runs::Times(items), Runs::Times(size)) => Runs::Times(items.div_ceil(size)),
            _ => Runs::Unknown,
        };
        Made {
            len,
            items,
            mapped: false,
        }
    } else {
        let len = fed.iter().fold(Runs::Times(1), |runs, f| runs.max(f.len));
        let lists_of_its_own = catalog
            .get(class)
            .is_some_and(|class| class.output_is_list.contains(&true));
        Made {
            // A list whose length this node decides, in a way Orchestrator does not know.
            len: if lists_of_its_own { Runs::Unknown } else { len },
            items,
            mapped: len != Runs::Times(1) || lists_of_its_own,
        }
    };
    made.insert(id.to_owned(), result);
    result
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn recorded() -> NodeCatalog {
        let raw = include_str!("../../tests/fixtures/comfyui/object_info.json");
        NodeCatalog::from_object_info(&serde_json::from_str(raw).unwrap())
    }

    fn fanned(batch: Value, rebatch: Value) -> Value {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": batch, "color": 0}},
            "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": rebatch}},
            "3": {"class_type": "FluxKontextProImageNode", "inputs": {"prompt": "p", "input_image": ["2", 0]}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
        })
    }

    #[test]
    fn a_node_fed_a_list_runs_once_per_item_and_so_does_everything_after_it() {
        let runs = runs(&recorded(), &fanned(json!(4096), json!(1)));
        assert_eq!(runs["3"], Runs::Times(4096));
        assert_eq!(runs["4"], Runs::Times(4096));
        assert_eq!(runs["1"], Runs::Times(1));
        assert_eq!(runs["2"], Runs::Times(1));
        let runs = super::runs(&recorded(), &fanned(json!(6), json!(4)));
        assert_eq!(runs["3"], Runs::Times(2));
    }

    #[test]
    fn a_list_whose_length_a_link_decides_is_unknown() {
        let mut workflow = fanned(json!(["9", 0]), json!(1));
        workflow["9"] = json!({"class_type": "PrimitiveInt", "inputs": {"value": 6}});
        assert_eq!(runs(&recorded(), &workflow)["3"], Runs::Unknown);
    }

    #[test]
    fn a_workflow_without_lists_runs_each_node_once() {
        let workflow = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 8, "color": 0}},
            "3": {"class_type": "FluxKontextProImageNode", "inputs": {"prompt": "p", "input_image": ["1", 0]}},
        });
        let runs = runs(&recorded(), &workflow);
        assert_eq!(
            runs.get("3").copied().unwrap_or(Runs::Times(1)),
            Runs::Times(1)
        );
    }

    #[test]
    fn a_cycle_is_unknown_not_endless() {
        let workflow = json!({
            "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 1}},
        });
        let runs = runs(&recorded(), &workflow);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs["1"], Runs::Unknown);
    }
}
