//! The FLUX models Orchestrator can call, their prices, and the checks a request body passes before anything is
//! priced or sent.
//!
//! Prices are BFL's list prices (https://docs.bfl.ml/quick_start/pricing, 1 credit = $0.01), kept here and nowhere
//! else, in millionths of a dollar so that budget sums stay exact. Field ranges follow BFL's API reference as
//! summarised in `shared/CONTRACTS.md` §2; where BFL leaves a bound open, the tighter one ComfyUI's BFL nodes use
//! is taken, so a request Orchestrator accepts is one BFL accepts too.

use serde_json::{Map, Value, json};

use crate::money::usd;

mod checker;
use checker::Checker;

/// How a model is asked for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `width` × `height` (256–1440, multiples of 32); FLUX.1 [dev] adds `steps` and `guidance`.
    Sized { steps_and_guidance: bool },
    /// `aspect_ratio` and `raw` (FLUX 1.1 [pro] Ultra).
    Ultra,
    /// Editing an `input_image` from a prompt (Kontext).
    Kontext,
    /// FLUX.2: `width` × `height` (multiples of 16, at most 4 megapixels) and up to `references` input images;
    /// [flex] adds `steps`, `guidance` and `prompt_upsampling`.
    Flux2 { references: usize, flex: bool },
}

/// A price by megapixel (FLUX.2): the first megapixel of the output, then each further one of the output or of
/// the input images. Source: black-forest-labs/skills `skills/bfl-api/SKILL.md` (`firstMP + (outputMP − 1) ×
/// mpPrice + inputMP × mpPrice`, in credits); ComfyUI's FLUX.2 price badges round the output up to whole
/// megapixels of 1024², and a real answer (`cost: 4.5` for `output_mp: 1.98`) agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerMegapixel {
    pub first_micros: i64,
    pub extra_micros: i64,
}

/// BFL scales an input image above 4 megapixels down (help.bfl.ai, FLUX.2 technical specifications), so 4 is the
/// most one can be billed for; the estimate takes that bound (BFL's own `cost` then settles the charge).
const MAX_INPUT_MEGAPIXELS: i64 = 4;
/// FLUX.2's largest output: 4 megapixels (help.bfl.ai).
const MAX_FLUX2_PIXELS: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct FluxModel {
    /// BFL's endpoint name: `POST /v1/<name>`.
    pub name: &'static str,
    pub label: &'static str,
    pub price_micros: i64,
    pub shape: Shape,
    /// The strictest moderation is 0; Kontext caps the range at 2.
    pub max_safety_tolerance: u64,
    pub default_output_format: &'static str,
    /// Where the price comes from.
    pub price_source: &'static str,
    /// FLUX.2's price by megapixel; `price_micros` is then the price of a one-megapixel image.
    pub per_megapixel: Option<PerMegapixel>,
}

pub const DEFAULT_MODEL: &str = "flux-pro-1.1";

/// The one table of models and prices.
pub const MODELS: &[FluxModel] = &[
    FluxModel {
        name: "flux-pro-1.1",
        label: "FLUX1.1 [pro]",
        price_micros: 40_000,
        shape: Shape::Sized {
            steps_and_guidance: false,
        },
        max_safety_tolerance: 6,
        default_output_format: "jpeg",
        price_source: "bfl.ai pricing: 4 credits",
        per_megapixel: None,
    },
    FluxModel {
        name: "flux-pro-1.1-ultra",
        label: "FLUX1.1 [pro] Ultra (and Raw)",
        price_micros: 60_000,
        shape: Shape::Ultra,
        max_safety_tolerance: 6,
        default_output_format: "jpeg",
        price_source: "bfl.ai pricing: 6 credits",
        per_megapixel: None,
    },
    FluxModel {
        name: "flux-dev",
        label: "FLUX.1 [dev]",
        price_micros: 25_000,
        shape: Shape::Sized {
            steps_and_guidance: true,
        },
        max_safety_tolerance: 6,
        default_output_format: "jpeg",
        price_source: "2.5 credits, from a page citing bfl.ai pricing (not on BFL's own page)",
        per_megapixel: None,
    },
    FluxModel {
        name: "flux-kontext-pro",
        label: "FLUX.1 Kontext [pro]",
        price_micros: 40_000,
        shape: Shape::Kontext,
        max_safety_tolerance: 2,
        default_output_format: "png",
        price_source: "bfl.ai pricing: 4 credits",
        per_megapixel: None,
    },
    FluxModel {
        name: "flux-kontext-max",
        label: "FLUX.1 Kontext [max]",
        price_micros: 80_000,
        shape: Shape::Kontext,
        max_safety_tolerance: 2,
        default_output_format: "png",
        price_source: "bfl.ai pricing: 8 credits",
        per_megapixel: None,
    },
    flux2(
        "flux-2-klein-4b",
        "FLUX.2 [klein] 4B",
        14_000,
        1_000,
        4,
        false,
    ),
    flux2(
        "flux-2-klein-9b",
        "FLUX.2 [klein] 9B",
        15_000,
        2_000,
        4,
        false,
    ),
    flux2("flux-2-pro", "FLUX.2 [pro]", 30_000, 15_000, 8, false),
    flux2("flux-2-max", "FLUX.2 [max]", 70_000, 30_000, 8, false),
    flux2("flux-2-flex", "FLUX.2 [flex]", 50_000, 50_000, 8, true),
];

/// A FLUX.2 model: fields from BFL's API reference (docs.bfl.ai/api-reference/models, the FLUX.2 pages:
/// `safety_tolerance` 0–5, `output_format` jpeg|png, `input_image`…`input_image_8`, four for [klein]; [flex]'s
/// `steps` 1–50 (50) and `guidance` 1.5–10 (4.5)), prices from the skills repository (see [`PerMegapixel`]).
const fn flux2(
    name: &'static str,
    label: &'static str,
    first_micros: i64,
    extra_micros: i64,
    references: usize,
    flex: bool,
) -> FluxModel {
    FluxModel {
        name,
        label,
        price_micros: first_micros,
        shape: Shape::Flux2 { references, flex },
        max_safety_tolerance: 5,
        default_output_format: "jpeg",
        price_source: "black-forest-labs/skills SKILL.md: by megapixel",
        per_megapixel: Some(PerMegapixel {
            first_micros,
            extra_micros,
        }),
    }
}

pub fn model(name: &str) -> Option<&'static FluxModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The catalogue as `GET /api/flux/models` shows it.
pub fn catalogue() -> Value {
    let models: Vec<Value> = MODELS
        .iter()
        .map(|m| {
            json!({
                "model": m.name,
                "label": m.label,
                "priceUsd": usd(m.price_micros),
                "credits": m.price_micros as f64 / 10_000.0,
                "perMegapixel": m.per_megapixel.map(|p| json!({
                    "firstUsd": usd(p.first_micros), "eachFurtherUsd": usd(p.extra_micros),
                })),
                "priceSource": m.price_source,
                "fields": fields_of(m.shape),
            })
        })
        .collect();
    json!({ "default": DEFAULT_MODEL, "currency": "USD", "models": models })
}

/// A request that passed every check: the exact body BFL will get.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub model: &'static FluxModel,
    pub payload: Map<String, Value>,
    /// What this request costs: the model's price, or for FLUX.2 its price for these megapixels.
    pub price_micros: i64,
    /// FLUX.2: the megapixels billed, `(output, input images)`.
    pub megapixels: Option<(i64, i64)>,
}

impl ValidRequest {
    /// The payload as one canonical string (keys sorted), what a confirmation and an idempotency key bind to.
    pub fn canonical(&self) -> String {
        let sorted: std::collections::BTreeMap<&String, &Value> = self.payload.iter().collect();
        format!(
            "{}\n{}",
            self.model.name,
            serde_json::to_string(&sorted).unwrap_or_default()
        )
    }
}

/// Keys of the request that are Orchestrator's, not BFL's.
const CONTROL_KEYS: [&str; 5] = [
    "model",
    "dryRun",
    "dry_run",
    "confirmToken",
    "confirm_token",
];

/// camelCase spellings accepted for BFL's snake_case fields.
const ALIASES: [(&str, &str); 7] = [
    ("promptUpsampling", "prompt_upsampling"),
    ("safetyTolerance", "safety_tolerance"),
    ("outputFormat", "output_format"),
    ("aspectRatio", "aspect_ratio"),
    ("imagePrompt", "image_prompt"),
    ("imagePromptStrength", "image_prompt_strength"),
    ("inputImage", "input_image"),
];

const PROMPT_MAX_CHARS: usize = 20_000;

/// FLUX.2's fields in one list: [klein] takes the first 10, [pro] and [max] the first 14, [flex] all.
const FLUX2_FLEX_FIELDS: &[&str] = &[
    "prompt",
    "width",
    "height",
    "seed",
    "safety_tolerance",
    "output_format",
    "input_image",
    "input_image_2",
    "input_image_3",
    "input_image_4",
    "input_image_5",
    "input_image_6",
    "input_image_7",
    "input_image_8",
    "steps",
    "guidance",
    "prompt_upsampling",
];

fn fields_of(shape: Shape) -> &'static [&'static str] {
    match shape {
        Shape::Flux2 { flex: true, .. } => FLUX2_FLEX_FIELDS,
        Shape::Flux2 { references, .. } => &FLUX2_FLEX_FIELDS[..6 + references],
        Shape::Sized {
            steps_and_guidance: false,
        } => &[
            "prompt",
            "width",
            "height",
            "seed",
            "safety_tolerance",
            "output_format",
            "prompt_upsampling",
            "image_prompt",
        ],
        Shape::Sized {
            steps_and_guidance: true,
        } => &[
            "prompt",
            "width",
            "height",
            "steps",
            "guidance",
            "seed",
            "safety_tolerance",
            "output_format",
            "prompt_upsampling",
            "image_prompt",
        ],
        Shape::Ultra => &[
            "prompt",
            "aspect_ratio",
            "raw",
            "seed",
            "safety_tolerance",
            "output_format",
            "prompt_upsampling",
            "image_prompt",
            "image_prompt_strength",
        ],
        Shape::Kontext => &[
            "prompt",
            "input_image",
            "aspect_ratio",
            "seed",
            "safety_tolerance",
            "output_format",
            "prompt_upsampling",
        ],
    }
}

/// Checks a `POST /api/flux/generate` body and builds BFL's payload, defaults filled in so that the dry run
/// shows exactly what would be sent. Every problem is reported, each under its field.
pub fn validate(body: &Map<String, Value>) -> Result<ValidRequest, Map<String, Value>> {
    let model = model_of(body)?;
    let mut problems = Map::new();
    let fields = canonical_fields(body, &mut problems);
    refuse_foreign_fields(model, &fields, &mut problems);

    let mut payload = Map::new();
    Checker {
        fields: &fields,
        problems: &mut problems,
        payload: &mut payload,
    }
    .model_fields(model);

    if !problems.is_empty() {
        return Err(problems);
    }
    let (price_micros, megapixels) = price_of(model, &payload);
    Ok(ValidRequest {
        model,
        payload,
        price_micros,
        megapixels,
    })
}

/// The model the body names, by default [`DEFAULT_MODEL`]; an unknown one is the only problem reported.
fn model_of(body: &Map<String, Value>) -> Result<&'static FluxModel, Map<String, Value>> {
    let mut problems = Map::new();
    let model = match body.get("model") {
        None | Some(Value::Null) => model(DEFAULT_MODEL),
        Some(Value::String(name)) => model(name.trim()),
        Some(_) => None,
    };
    let Some(model) = model else {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        problems.insert(
            "model".into(),
            json!(format!(
                "unknown model; expected one of {}",
                names.join(", ")
            )),
        );
        return Err(problems);
    };
    Ok(model)
}

/// The body's fields under their snake_case names, without the control keys and nulls; a field given under both
/// names is a problem.
fn canonical_fields(
    body: &Map<String, Value>,
    problems: &mut Map<String, Value>,
) -> Map<String, Value> {
    let mut fields = Map::new();
    for (key, value) in body {
        // A null is an absent field, as a form that clears an input sends it.
        if CONTROL_KEYS.contains(&key.as_str()) || value.is_null() {
            continue;
        }
        let name = ALIASES
            .iter()
            .find(|(alias, _)| alias == key)
            .map_or(key.as_str(), |(_, canonical)| canonical);
        if fields.insert(name.to_owned(), value.clone()).is_some() {
            problems.insert(
                name.into(),
                json!("given twice (in snake_case and camelCase)"),
            );
        }
    }
    fields
}

/// A problem for each field the model does not take, naming the models that do.
fn refuse_foreign_fields(
    model: &FluxModel,
    fields: &Map<String, Value>,
    problems: &mut Map<String, Value>,
) {
    let allowed = fields_of(model.shape);
    for key in fields.keys() {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        let takers: Vec<&str> = MODELS
            .iter()
            .filter(|m| fields_of(m.shape).contains(&key.as_str()))
            .map(|m| m.name)
            .collect();
        let message = if takers.is_empty() {
            format!("unknown field; {} takes {}", model.name, allowed.join(", "))
        } else {
            format!(
                "{} takes no {key} (only {} do)",
                model.name,
                takers.join(", ")
            )
        };
        problems.insert(key.clone(), json!(message));
    }
}

/// The price of a checked payload and, for a model priced by megapixel, the output and input megapixels billed.
fn price_of(model: &FluxModel, payload: &Map<String, Value>) -> (i64, Option<(i64, i64)>) {
    match model.per_megapixel {
        None => (model.price_micros, None),
        Some(rate) => {
            let pixels = payload["width"].as_u64().unwrap_or(1024)
                * payload["height"].as_u64().unwrap_or(1024);
            let output = (pixels.div_ceil(1024 * 1024) as i64).max(1);
            let inputs = payload
                .keys()
                .filter(|k| k.starts_with("input_image"))
                .count() as i64
                * MAX_INPUT_MEGAPIXELS;
            let price = rate.first_micros + (output - 1 + inputs) * rate.extra_micros;
            (price, Some((output, inputs)))
        }
    }
}

#[cfg(test)]
mod tests;
