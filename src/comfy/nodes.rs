//! Which node classes a ComfyUI has, and which of them cost money, read from its `/object_info`.
//!
//! ComfyUI 0.3.64 marks its 100 "API nodes" (FLUX Pro, Ideogram, Kling, Veo, OpenAI, …) with `"api_node": true`
//! and a category under `api node/`; each run of one charges the Comfy.org account whose credentials the prompt's
//! `extra_data` carries. Newer ComfyUI also sends a `price_badge` (`{engine: "jsonata", depends_on, expr}`,
//! Comfy-Org/ComfyUI#11582). A node that asks for those credentials (a hidden input of type `AUTH_TOKEN_COMFY_ORG`
//! or `API_KEY_COMFY_ORG`) is paid too, flag or not: a custom node can spend them without declaring itself. A
//! workflow is paid when any of its nodes is; a class the backend does not list is not assumed free
//! (`shared/CONTRACTS.md`, "ComfyUI's paid API nodes").

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// The hidden input types through which ComfyUI hands a node the prompt's Comfy.org credentials (`execution.py`
/// `get_input_data`; V1 nodes name the inputs `auth_token` / `comfy_api_key`, V3 ones `auth_token_comfy_org` /
/// `api_key_comfy_org`: the type is what counts).
const CREDENTIAL_TYPES: [&str; 2] = ["AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"];

/// ComfyUI 0.3.64's classes that ask for the credentials and never call Comfy.org: they only build the inputs of
/// Luma's paid nodes (`comfy_api_nodes/nodes_luma.py`: a reference chain, a concept chain).
const ASK_BUT_NEVER_CALL: [&str; 2] = ["LumaConceptsNode", "LumaReferenceNode"];

/// Whether a class (its `/object_info` entry) asks for the prompt's Comfy.org credentials.
fn asks_for_credentials(info: &Value) -> bool {
    let hidden = info.pointer("/input/hidden").and_then(Value::as_object);
    hidden.into_iter().flatten().any(|(_, kind)| {
        // `"AUTH_TOKEN_COMFY_ORG"` (V1) or `["AUTH_TOKEN_COMFY_ORG"]` (V3).
        let kind = kind
            .as_str()
            .or_else(|| kind.get(0).and_then(Value::as_str));
        kind.is_some_and(|kind| CREDENTIAL_TYPES.contains(&kind))
    })
}

/// What Orchestrator needs to know of one node class.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeClass {
    pub category: String,
    pub display_name: String,
    /// Whether a run of it costs money: flagged `api_node`, or asking for the Comfy.org credentials.
    pub api_node: bool,
    pub price_badge: Option<Value>,
    /// Which of its outputs are lists, which make the nodes they feed run once per item.
    pub output_is_list: Vec<bool>,
}

/// Every class one backend lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCatalog {
    classes: HashMap<String, NodeClass>,
}

/// A paid node of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PaidNode {
    /// The node's id in the workflow.
    pub id: String,
    pub class_type: String,
    pub category: String,
    pub display_name: String,
    /// The node's literal inputs (texts cut at 500 characters; links and lists left out), so a person sees what
    /// they approve: the prompt, the size.
    #[schema(value_type = Object)]
    pub inputs: serde_json::Map<String, Value>,
    #[serde(skip)]
    pub price_badge: Option<Value>,
}

/// What of a node's inputs a person reads before approving it.
fn shown_inputs(node: &Value) -> serde_json::Map<String, Value> {
    node.get("inputs")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| {
            let shown = match value {
                Value::String(text) if text.chars().count() > 500 => {
                    Value::String(text.chars().take(500).collect::<String>() + "…")
                }
                Value::String(_) | Value::Number(_) | Value::Bool(_) => value.clone(),
                _ => return None,
            };
            Some((name.clone(), shown))
        })
        .collect()
}

/// Why a workflow cannot be classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unclassified {
    /// Not an object of nodes with a `class_type` each: ComfyUI refuses it before running anything.
    NotAWorkflow,
    /// Node ids and classes the backend does not list.
    UnknownClasses(Vec<(String, String)>),
}

impl NodeCatalog {
    pub fn from_object_info(object_info: &Value) -> Self {
        let classes = object_info
            .as_object()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|(name, info)| {
                        let text = |key: &str| {
                            info.get(key)
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned()
                        };
                        // The flag or the credentials, not the category: 13 free helpers (camera controls,
                        // option nodes) share the `api node/` categories.
                        let flagged = info.get("api_node").and_then(Value::as_bool) == Some(true);
                        let asks = asks_for_credentials(info)
                            && !ASK_BUT_NEVER_CALL.contains(&name.as_str());
                        let class = NodeClass {
                            api_node: flagged || asks,
                            category: text("category"),
                            display_name: text("display_name"),
                            price_badge: info.get("price_badge").filter(|b| !b.is_null()).cloned(),
                            output_is_list: info["output_is_list"]
                                .as_array()
                                .map(|flags| flags.iter().map(|f| f == true).collect())
                                .unwrap_or_default(),
                        };
                        (name.clone(), class)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { classes }
    }

    pub fn get(&self, class: &str) -> Option<&NodeClass> {
        self.classes.get(class)
    }

    /// The names of every class that costs nothing to run, sorted.
    pub fn free_classes(&self) -> Vec<&str> {
        let mut free: Vec<&str> = self
            .classes
            .iter()
            .filter(|(_, class)| !class.api_node)
            .map(|(name, _)| name.as_str())
            .collect();
        free.sort_unstable();
        free
    }

    /// Whether any of these `(node id, class)` pairs is paid; the cheap check of the gateway's hot path.
    pub fn any_paid(&self, nodes: &[(String, String)]) -> Result<bool, Unclassified> {
        let unknown: Vec<(String, String)> = nodes
            .iter()
            .filter(|(_, class)| !self.classes.contains_key(class))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(Unclassified::UnknownClasses(unknown));
        }
        Ok(nodes.iter().any(|(_, class)| self.classes[class].api_node))
    }

    /// The paid nodes of an API-format workflow, in node-id order; an empty list for a free one.
    pub fn paid_nodes(&self, workflow: &Value) -> Result<Vec<PaidNode>, Unclassified> {
        let nodes = workflow.as_object().ok_or(Unclassified::NotAWorkflow)?;
        let mut paid = Vec::new();
        let mut unknown = Vec::new();
        for (id, node) in nodes {
            let Some(class_type) = node.get("class_type").and_then(Value::as_str) else {
                return Err(Unclassified::NotAWorkflow);
            };
            match self.classes.get(class_type) {
                None => unknown.push((id.clone(), class_type.to_owned())),
                Some(class) if class.api_node => paid.push(PaidNode {
                    id: id.clone(),
                    class_type: class_type.to_owned(),
                    category: class.category.clone(),
                    display_name: class.display_name.clone(),
                    inputs: shown_inputs(node),
                    price_badge: class.price_badge.clone(),
                }),
                Some(_) => {}
            }
        }
        if unknown.is_empty() {
            Ok(paid)
        } else {
            Err(Unclassified::UnknownClasses(unknown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn recorded() -> NodeCatalog {
        let raw = include_str!("../../tests/fixtures/comfyui/object_info.json");
        NodeCatalog::from_object_info(&serde_json::from_str(raw).unwrap())
    }

    #[test]
    fn the_recorded_catalog_has_100_paid_and_378_free_classes() {
        let catalog = recorded();
        assert_eq!(catalog.free_classes().len(), 378);
        let ultra = catalog.get("FluxProUltraImageNode").unwrap();
        assert!(ultra.api_node);
        assert_eq!(ultra.category, "api node/image/BFL");
        assert!(!catalog.get("KSampler").unwrap().api_node);
    }

    #[test]
    fn no_free_class_is_taken_for_a_paid_one() {
        let catalog = recorded();
        for class in catalog.free_classes() {
            let workflow = serde_json::json!({"1": {"class_type": class, "inputs": {}}});
            assert_eq!(catalog.paid_nodes(&workflow), Ok(vec![]), "{class}");
        }
    }

    #[test]
    fn a_workflow_is_paid_when_any_node_is() {
        let catalog = recorded();
        let workflow = json!({
            "1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "a cat"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
        });
        let paid = catalog.paid_nodes(&workflow).unwrap();
        assert_eq!(paid.len(), 1);
        assert_eq!(
            (paid[0].id.as_str(), paid[0].class_type.as_str()),
            ("1", "FluxProUltraImageNode")
        );
        let free = json!({"9": {"class_type": "SaveImage", "inputs": {}}});
        assert!(catalog.paid_nodes(&free).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_class_is_not_assumed_free() {
        let catalog = recorded();
        let workflow = json!({"5": {"class_type": "SomeCustomPaidNode", "inputs": {}}});
        assert_eq!(
            catalog.paid_nodes(&workflow),
            Err(Unclassified::UnknownClasses(vec![(
                "5".into(),
                "SomeCustomPaidNode".into()
            )]))
        );
        assert_eq!(
            catalog.paid_nodes(&json!({"5": {"inputs": {}}})),
            Err(Unclassified::NotAWorkflow)
        );
        assert_eq!(
            catalog.paid_nodes(&json!([1])),
            Err(Unclassified::NotAWorkflow)
        );
    }

    /// A node that asks for the prompt's Comfy.org credentials can spend them, whatever its flag says; ComfyUI's
    /// own option nodes that ask and never call stay free.
    #[test]
    fn a_node_that_asks_for_the_credentials_is_paid_whatever_its_flag() {
        let info = json!({
            "Custom": {"category": "my nodes", "input": {"hidden": {"key": "API_KEY_COMFY_ORG"}}},
            "CustomV3": {"category": "my nodes", "api_node": false,
                "input": {"hidden": {"auth_token_comfy_org": ["AUTH_TOKEN_COMFY_ORG"]}}},
            "Plain": {"category": "my nodes", "input": {"hidden": {"unique_id": "UNIQUE_ID"}}},
        });
        let catalog = NodeCatalog::from_object_info(&info);
        assert!(catalog.get("Custom").unwrap().api_node);
        assert!(catalog.get("CustomV3").unwrap().api_node);
        assert!(!catalog.get("Plain").unwrap().api_node);
        let recorded = recorded();
        for class in ASK_BUT_NEVER_CALL {
            assert!(!recorded.get(class).unwrap().api_node, "{class}");
        }
    }

    #[test]
    fn a_price_badge_is_kept() {
        let info = json!({"NewPaid": {"category": "api node/x", "api_node": true, "display_name": "New",
            "price_badge": {"engine": "jsonata", "depends_on": {}, "expr": "{\"type\":\"usd\",\"usd\":0.035}"}}});
        let catalog = NodeCatalog::from_object_info(&info);
        assert!(catalog.get("NewPaid").unwrap().price_badge.is_some());
    }
}
