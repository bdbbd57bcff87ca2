//! The money gate for ComfyUI workflows: which of a workflow's nodes cost money, what they are estimated to cost,
//! and the confirmation that binds a person's approval to that exact workflow and price.
//!
//! Every way a workflow reaches a ComfyUI passes here (`POST /api/jobs`, the gateway's `/prompt`, MCP and the CLI
//! through the API, jobs sent from Orchestrator's queue or moved on failover): `Jobs::send_to_comfy` refuses to
//! post a workflow with paid nodes that has no approval. The estimate of a paid node is its unit price times the
//! number of times ComfyUI runs it (once per item of a list it is fed: [`crate::comfy::fan_out`]). The unit price
//! is, in this order, what its `price_badge` shows ([`badge`]: an upper bound), BFL's public price for the BFL nodes
//! (the same table as `/api/flux/generate`), or `COMFY_PAID_NODE_MAX_USD`. Where the graph does not fix a count
//! (a list's length, a linked count widget), the run cannot be priced in advance: its confirmation must carry the
//! person's cap (`maxUsd`). Either way the Comfy.org egress holds a run to the amount confirmed.

mod badge;

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::bfl::catalog;
use crate::codes::Code;
use crate::comfy::fan_out::{self, Runs};
use crate::comfy::models::ModelCache;
use crate::comfy::nodes::{NodeCatalog, PaidNode, Unclassified};
use crate::money::checkout::Checkout;
use crate::money::confirm::{Confirmer, TokenProblem};
use crate::money::refusal::Refusal;
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

/// One paid node with its estimate: its unit price times its runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PricedNode {
    #[serde(flatten)]
    pub node: PaidNode,
    /// One run's price; `null` when it depends on a count the graph does not fix.
    #[serde(rename = "unitPriceUsd")]
    pub unit_price_usd: Option<f64>,
    /// How many times ComfyUI runs it (once per item of a list it is fed); `null` when the graph does not fix it.
    pub runs: Option<u64>,
    /// Unit price × runs (what is known of it, when either is not).
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
    /// A paid node runs a number of times, or costs a count, that the graph does not fix: `total_micros` is a
    /// floor, and a confirmation needs the person's cap.
    pub open_ended: bool,
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
            "openEnded": self.open_ended,
        })
    }

    /// What a confirmation pays for, the most the run may spend: the person's cap (`maxUsd`, at or above the
    /// estimate), else the estimate; `None` when the estimate does not cover the run and no cap was given.
    pub fn amount(&self, max_micros: Option<i64>) -> Result<Option<i64>, Refusal> {
        match max_micros {
            Some(max) if max < self.total_micros => Err(Refusal::invalid(
                "maxUsd",
                format!(
                    "must be at least the estimate, ${:.3}",
                    usd(self.total_micros)
                ),
            )),
            Some(max) => Ok(Some(max)),
            None if self.open_ended => Ok(None),
            None => Ok(Some(self.total_micros)),
        }
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
        let paid = catalog.paid_nodes(workflow)?;
        let runs = if paid.is_empty() {
            Default::default()
        } else {
            fan_out::runs(catalog, workflow)
        };
        let nodes: Vec<PricedNode> = paid
            .into_iter()
            .map(|node| {
                let inputs = workflow[&node.id]["inputs"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let (unit, price_source) = self.price(&node, &inputs);
                let runs = match runs.get(&node.id) {
                    Some(Runs::Times(n)) => Some(*n),
                    Some(Runs::Unknown) => None,
                    None => Some(1),
                };
                let price_micros = unit.unwrap_or(0).saturating_mul(runs.unwrap_or(1) as i64);
                PricedNode {
                    unit_price_usd: unit.map(usd),
                    runs,
                    price_usd: usd(price_micros),
                    price_micros,
                    price_source,
                    node,
                }
            })
            .collect();
        let total_micros = nodes
            .iter()
            .fold(0i64, |sum, n| sum.saturating_add(n.price_micros));
        let open_ended = nodes
            .iter()
            .any(|n| n.runs.is_none() || n.unit_price_usd.is_none());
        Ok(Assessment {
            nodes,
            total_micros,
            open_ended,
        })
    }

    /// One run's price and where it comes from; `None` when a count it depends on is not fixed.
    fn price(
        &self,
        node: &PaidNode,
        inputs: &serde_json::Map<String, Value>,
    ) -> (Option<i64>, &'static str) {
        match node
            .price_badge
            .as_ref()
            .and_then(|b| badge::price(b, inputs))
        {
            Some(badge::BadgePrice::AtMost(micros)) => return (Some(micros), "price_badge"),
            Some(badge::BadgePrice::Unknown) => return (None, "price_badge"),
            None => {}
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
        // Otherwise the ceiling, or the most one call of the node's provider can cost when that is more: the
        // egress prices each call by its route, and never above what was confirmed for the node.
        let provider = super::egress::routes::highest_for(&node.category)
            .filter(|highest| *highest > self.ceiling_micros);
        match (table, provider) {
            (Some(micros), _) => (Some(micros), "price_table"),
            (None, Some(micros)) => (Some(micros), "price_table"),
            (None, None) => (Some(self.ceiling_micros), "ceiling"),
        }
    }

    /// A token confirming `workflow` for `amount_micros` (the estimate, or the person's cap).
    pub fn issue(&self, workflow: &Value, amount_micros: i64) -> String {
        self.confirmer.issue(&canonical(workflow), amount_micros)
    }

    /// Checks a token for `workflow` at `amount_micros`; answers its id (recorded so it pays once).
    pub fn check(
        &self,
        token: Option<&str>,
        workflow: &Value,
        amount_micros: i64,
    ) -> Result<String, TokenProblem> {
        self.confirmer
            .check(token, &canonical(workflow), amount_micros)
    }
}

/// What a token binds: the workflow in one spelling (serde_json's maps are sorted), marked as a ComfyUI workflow so
/// a FLUX token can never confirm one.
pub fn canonical(workflow: &Value) -> String {
    format!("comfy-workflow\n{workflow}")
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
        let raw = include_str!("../../../tests/fixtures/comfyui/object_info.json");
        NodeCatalog::from_object_info(&serde_json::from_str(raw).unwrap())
    }

    #[test]
    /// BFL's nodes at BFL's prices; another provider's at the most one of its calls can cost (Ideogram V3: $0.20 an
    /// image, up to 8 images a call), never less than the ceiling.
    fn bfl_nodes_cost_what_bfl_charges_and_the_rest_their_providers_most() {
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
                ("2", 1_600_000, "price_table"),
                ("3", 50_000, "price_table")
            ]
        );
        assert_eq!(assessment.total_micros, 1_710_000);
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
    fn a_token_binds_the_workflow_and_its_price() {
        let gate = gate();
        let catalog = recorded();
        let workflow =
            json!({"1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "a"}}});
        let assessment = gate.assess(&catalog, &workflow).unwrap();
        let amount = assessment.total_micros;
        let token = gate.issue(&workflow, amount);
        assert!(gate.check(Some(&token), &workflow, amount).is_ok());
        let other =
            json!({"1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "b"}}});
        assert_eq!(
            gate.check(Some(&token), &other, amount),
            Err(TokenProblem::Mismatch)
        );
        assert_eq!(
            gate.check(Some(&token), &workflow, amount + 1),
            Err(TokenProblem::Mismatch)
        );
        assert_eq!(
            gate.check(None, &workflow, amount),
            Err(TokenProblem::Missing)
        );
    }

    /// `EmptyImage(batch_size=6) → RebatchImages(1) → FLUX Kontext [pro]`: six runs at $0.04; with the batch size
    /// fed by a link, a run that needs a cap.
    #[test]
    fn a_paid_node_fed_a_list_is_priced_per_item_or_needs_a_cap() {
        let fanned = |batch: Value| {
            json!({
                "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": batch, "color": 0}},
                "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 1}},
                "3": {"class_type": "FluxKontextProImageNode", "inputs": {"prompt": "p", "input_image": ["2", 0]}},
                "9": {"class_type": "PrimitiveInt", "inputs": {"value": 6}},
            })
        };
        let assessment = gate().assess(&recorded(), &fanned(json!(6))).unwrap();
        let node = &assessment.nodes[0];
        assert_eq!(
            (node.unit_price_usd, node.runs, node.price_micros),
            (Some(0.04), Some(6), 240_000)
        );
        assert!(!assessment.open_ended);
        assert_eq!(assessment.amount(None).unwrap(), Some(240_000));
        assert!(
            assessment.amount(Some(100_000)).is_err(),
            "a cap below the estimate"
        );

        let open = gate()
            .assess(&recorded(), &fanned(json!(["9", 0])))
            .unwrap();
        assert!(open.open_ended);
        assert_eq!(open.nodes[0].runs, None);
        assert_eq!(open.amount(None).unwrap(), None, "a cap is needed");
        assert_eq!(open.amount(Some(500_000)).unwrap(), Some(500_000));
    }
}
