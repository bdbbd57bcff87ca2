//! The money gate for ComfyUI workflows: which of a workflow's nodes cost money, what they are estimated to cost,
//! and the confirmation that binds a person's approval to that exact workflow and price.
//!
//! Every way a workflow reaches a ComfyUI passes here (`POST /api/jobs`, the gateway's `/prompt`, MCP and the CLI
//! through the API, jobs sent from Orchestrator's queue or moved on failover): `Jobs::send_to_comfy` refuses to
//! post a workflow with paid nodes that has no approval. The estimate of a paid node is, in this order, the price
//! its `price_badge` shows (the highest dollar figure in it: an upper bound), BFL's public price for the BFL nodes
//! (the same table as `/api/flux/generate`), or `COMFY_PAID_NODE_MAX_USD`.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::bfl::catalog;
use crate::codes::Code;
use crate::comfy::models::ModelCache;
use crate::comfy::nodes::{NodeCatalog, PaidNode, Unclassified};
use crate::money::checkout::Checkout;
use crate::money::confirm::{Confirmer, TokenProblem};
use crate::money::usd;
use crate::problems::NotConfigured;

/// ComfyUI 0.3.64's BFL nodes and the BFL model each calls (`comfy_api_nodes/nodes_bfl.py`: the path it posts to is
/// `/proxy/bfl/<model>/generate`); their prices are BFL's (https://docs.bfl.ml/quick_start/pricing).
const BFL_NODES: [(&str, &str); 4] = [
    ("FluxProUltraImageNode", "flux-pro-1.1-ultra"),
    ("FluxProImageNode", "flux-pro-1.1"),
    ("FluxKontextProImageNode", "flux-kontext-pro"),
    ("FluxKontextMaxImageNode", "flux-kontext-max"),
];

/// BFL nodes whose model `/api/flux/generate` does not offer, at BFL's public price: FLUX.1 Fill [pro], 5 credits
/// (https://docs.bfl.ml/quick_start/pricing). Expand, Canny and Depth have no public price: they get the ceiling.
const OTHER_PRICES: [(&str, i64); 1] = [("FluxProFillNode", 50_000)];

/// One paid node with its estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PricedNode {
    #[serde(flatten)]
    pub node: PaidNode,
    #[serde(rename = "priceUsd")]
    pub price_usd: f64,
    /// `price_badge`, `price_table` or `ceiling`.
    #[serde(rename = "priceSource")]
    pub price_source: &'static str,
    #[serde(skip)]
    pub price_micros: i64,
}

/// What running a workflow costs, as far as Orchestrator can tell before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub nodes: Vec<PricedNode>,
    pub total_micros: i64,
}

impl Assessment {
    pub fn is_paid(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The paid nodes as answers name them: `{id, class_type, category, display_name, priceUsd, priceSource}`.
    pub fn nodes_json(&self) -> Value {
        serde_json::to_value(&self.nodes).unwrap_or_default()
    }

    /// What a job waiting for approval keeps: the nodes and the estimate.
    pub fn approval_json(&self) -> Value {
        json!({
            "paidNodes": self.nodes_json(),
            "estimatedCost": { "usd": usd(self.total_micros), "currency": "USD" },
        })
    }
}

/// The gate's settings and its confirmation keys (shared with FLUX: one key, one set of token rules).
pub struct Gate {
    confirmer: Arc<Confirmer>,
    pub allow_generation: bool,
    ceiling_micros: i64,
}

impl Gate {
    pub fn new(confirmer: Arc<Confirmer>, allow_generation: bool, ceiling_micros: i64) -> Self {
        Self {
            confirmer,
            allow_generation,
            ceiling_micros,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.confirmer.ttl().as_secs()
    }

    /// See [`crate::money::confirm::Confirmer::forget_used_before`].
    pub fn forget_used_before(&self) -> String {
        self.confirmer.forget_used_before()
    }

    /// The paid nodes of `workflow` on the backend `catalog` describes, each with its estimate.
    pub fn assess(
        &self,
        catalog: &NodeCatalog,
        workflow: &Value,
    ) -> Result<Assessment, Unclassified> {
        let nodes: Vec<PricedNode> = catalog
            .paid_nodes(workflow)?
            .into_iter()
            .map(|node| {
                let (price_micros, price_source) = self.price(&node);
                PricedNode {
                    price_usd: usd(price_micros),
                    price_micros,
                    price_source,
                    node,
                }
            })
            .collect();
        let total_micros = nodes.iter().map(|n| n.price_micros).sum();
        Ok(Assessment {
            nodes,
            total_micros,
        })
    }

    fn price(&self, node: &PaidNode) -> (i64, &'static str) {
        if let Some(micros) = node.price_badge.as_ref().and_then(badge_price) {
            return (micros, "price_badge");
        }
        let table = BFL_NODES
            .iter()
            .find(|(class, _)| *class == node.class_type)
            .and_then(|(_, model)| catalog::model(model))
            .map(|model| model.price_micros)
            .or_else(|| {
                OTHER_PRICES
                    .iter()
                    .find(|(class, _)| *class == node.class_type)
                    .map(|(_, micros)| *micros)
            });
        match table {
            Some(micros) => (micros, "price_table"),
            None => (self.ceiling_micros, "ceiling"),
        }
    }

    /// A token confirming `workflow` at the assessed price.
    pub fn issue(&self, workflow: &Value, assessment: &Assessment) -> String {
        self.confirmer
            .issue(&canonical(workflow), assessment.total_micros)
    }

    /// Checks a token for `workflow` at the assessed price; answers its id (recorded so it pays once).
    pub fn check(
        &self,
        token: Option<&str>,
        workflow: &Value,
        assessment: &Assessment,
    ) -> Result<String, TokenProblem> {
        self.confirmer
            .check(token, &canonical(workflow), assessment.total_micros)
    }
}

/// What a token binds: the workflow in one spelling (serde_json's maps are sorted), marked as a ComfyUI workflow so
/// a FLUX token can never confirm one.
pub fn canonical(workflow: &Value) -> String {
    format!("comfy-workflow\n{workflow}")
}

/// The highest dollar figure a `price_badge` can show (`{"engine": "jsonata", "expr": "…"}`; its results are
/// `{"type": "usd", "usd": 0.035}`, ranges `min_usd`/`max_usd` or lists): every number that follows a key ending in
/// `usd`. An upper bound, so a badge that depends on the inputs is never underestimated.
fn badge_price(badge: &Value) -> Option<i64> {
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
    best.map(|usd| (usd * 1_000_000.0).round() as i64)
}

/// What the job service needs to keep money safe.
pub struct Money {
    /// Each backend's node classes, cached with its model lists.
    pub models: Arc<ModelCache>,
    pub gate: Gate,
    /// The Comfy.org egress: an approved prompt gets a key of its job's own from it.
    pub egress: super::egress::Egress,
    pub checkout: Arc<Checkout>,
}

/// The refusal of a paid workflow when the server holds no Comfy.org key.
pub(crate) const COMFY_ORG_NOT_CONFIGURED: NotConfigured = NotConfigured {
    code: Code::ComfyOrgNotConfigured,
    what: "Comfy.org API nodes (COMFY_ORG_API_KEY)",
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate() -> Gate {
        Gate::new(
            Arc::new(Confirmer::new(Duration::from_secs(60))),
            true,
            1_000_000,
        )
    }

    fn recorded() -> NodeCatalog {
        let raw = include_str!("../../tests/fixtures/comfyui/object_info.json");
        NodeCatalog::from_object_info(&serde_json::from_str(raw).unwrap())
    }

    #[test]
    fn bfl_nodes_cost_what_bfl_charges_and_the_rest_the_ceiling() {
        let workflow = json!({
            "1": {"class_type": "FluxProUltraImageNode", "inputs": {}},
            "2": {"class_type": "IdeogramV3", "inputs": {}},
            "3": {"class_type": "FluxProFillNode", "inputs": {}},
            "4": {"class_type": "SaveImage", "inputs": {}},
        });
        let assessment = gate().assess(&recorded(), &workflow).unwrap();
        let prices: Vec<_> = assessment
            .nodes
            .iter()
            .map(|n| (n.node.id.as_str(), n.price_micros, n.price_source))
            .collect();
        assert_eq!(
            prices,
            [
                ("1", 60_000, "price_table"),
                ("2", 1_000_000, "ceiling"),
                ("3", 50_000, "price_table")
            ]
        );
        assert_eq!(assessment.total_micros, 1_110_000);
    }

    /// A custom node that asks for the Comfy.org credentials without the `api_node` flag needs a confirmation, at
    /// the ceiling (its price is not known).
    #[test]
    fn a_node_that_asks_for_the_credentials_is_priced_at_the_ceiling() {
        let info = json!({"Sneaky": {"category": "custom", "display_name": "Sneaky",
            "input": {"required": {}, "hidden": {"key": "API_KEY_COMFY_ORG"}}}});
        let catalog = NodeCatalog::from_object_info(&info);
        let workflow = json!({"7": {"class_type": "Sneaky", "inputs": {}}});
        let assessment = gate().assess(&catalog, &workflow).unwrap();
        assert!(assessment.is_paid());
        assert_eq!(assessment.total_micros, 1_000_000);
        assert_eq!(assessment.nodes[0].price_source, "ceiling");
    }

    #[test]
    fn a_price_badge_is_read_as_its_highest_figure() {
        let badge = json!({"engine": "jsonata", "depends_on": {"widgets": ["n"]},
            "expr": "n > 1 ? {\"type\":\"range_usd\",\"min_usd\":0.02,\"max_usd\":0.08} : {\"type\":\"usd\",\"usd\":0.035}"});
        assert_eq!(badge_price(&badge), Some(80_000));
        assert_eq!(
            badge_price(&json!({"expr": "{'type': 'usd', 'usd': 1.5}"})),
            Some(1_500_000)
        );
        assert_eq!(badge_price(&json!({"expr": "'see the docs'"})), None);
    }

    #[test]
    fn a_token_binds_the_workflow_and_its_price() {
        let gate = gate();
        let catalog = recorded();
        let workflow =
            json!({"1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "a"}}});
        let assessment = gate.assess(&catalog, &workflow).unwrap();
        let token = gate.issue(&workflow, &assessment);
        assert!(gate.check(Some(&token), &workflow, &assessment).is_ok());
        let other =
            json!({"1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "b"}}});
        assert_eq!(
            gate.check(Some(&token), &other, &assessment),
            Err(TokenProblem::Mismatch)
        );
        let dearer = Assessment {
            total_micros: assessment.total_micros + 1,
            ..assessment.clone()
        };
        assert_eq!(
            gate.check(Some(&token), &workflow, &dearer),
            Err(TokenProblem::Mismatch)
        );
        assert_eq!(
            gate.check(None, &workflow, &assessment),
            Err(TokenProblem::Missing)
        );
    }
}
