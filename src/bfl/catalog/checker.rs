//! [`Checker`]: one field at a time checked and copied, with its default, into BFL's payload.

use serde_json::{Map, Value, json};

use super::{FluxModel, MAX_FLUX2_PIXELS, PROMPT_MAX_CHARS, Shape};

/// Checks the body's fields (snake_case) into `payload`, recording each field's first problem in `problems`.
pub(super) struct Checker<'a> {
    pub(super) fields: &'a Map<String, Value>,
    pub(super) problems: &'a mut Map<String, Value>,
    pub(super) payload: &'a mut Map<String, Value>,
}

impl Checker<'_> {
    /// Every field `model` takes, in the order their problems are reported: the prompt, the shape's own fields,
    /// then those every model shares.
    pub(super) fn model_fields(&mut self, model: &FluxModel) {
        self.prompt();
        match model.shape {
            Shape::Sized { steps_and_guidance } => {
                self.dimension("width", 1024);
                self.dimension("height", 768);
                if steps_and_guidance {
                    self.integer("steps", 1, 50, Some(28));
                    self.number("guidance", 1.5, 5.0, Some(3.0));
                }
                self.base64_image("image_prompt", false, false);
            }
            Shape::Ultra => {
                self.aspect_ratio(Some("16:9"));
                self.boolean("raw", Some(false));
                self.base64_image("image_prompt", false, false);
                if self.fields.contains_key("image_prompt") {
                    self.number("image_prompt_strength", 0.0, 1.0, Some(0.1));
                } else if self.fields.contains_key("image_prompt_strength") {
                    self.problem("image_prompt_strength", "only applies with an image_prompt");
                }
            }
            Shape::Kontext => {
                self.base64_image("input_image", true, true);
                self.aspect_ratio(None);
            }
            Shape::Flux2 { references, flex } => {
                self.dimension16("width", 1024);
                self.dimension16("height", 1024);
                if let (Some(w), Some(h)) = (
                    self.payload.get("width").and_then(Value::as_u64),
                    self.payload.get("height").and_then(Value::as_u64),
                ) && w * h > MAX_FLUX2_PIXELS
                {
                    self.problem(
                        "width",
                        format!("{w} × {h} is over 4 megapixels, FLUX.2's largest"),
                    );
                }
                for n in 1..=references {
                    let field = match n {
                        1 => "input_image".to_owned(),
                        n => format!("input_image_{n}"),
                    };
                    self.base64_image(&field, false, true);
                }
                if flex {
                    self.integer("steps", 1, 50, Some(50));
                    self.number("guidance", 1.5, 10.0, Some(4.5));
                }
            }
        }
        self.integer("seed", 0, (1 << 53) - 1, None);
        self.integer(
            "safety_tolerance",
            0,
            model.max_safety_tolerance,
            Some(2.min(model.max_safety_tolerance)),
        );
        self.output_format(model.default_output_format);
        match model.shape {
            // FLUX.2 [pro], [max] and [klein] document no prompt_upsampling; [flex] has it on by default.
            Shape::Flux2 { flex: false, .. } => {}
            Shape::Flux2 { flex: true, .. } => self.boolean("prompt_upsampling", Some(true)),
            _ => self.boolean("prompt_upsampling", Some(false)),
        }
    }

    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems
            .entry(field.to_owned())
            .or_insert_with(|| Value::String(message.into()));
    }

    /// The field's value, `None` when absent or null.
    fn given(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).filter(|v| !v.is_null())
    }

    fn prompt(&mut self) {
        match self.given("prompt") {
            Some(Value::String(text)) if text.trim().is_empty() => {
                self.problem("prompt", "must not be empty")
            }
            Some(Value::String(text)) if text.chars().count() > PROMPT_MAX_CHARS => self.problem(
                "prompt",
                format!("is longer than {PROMPT_MAX_CHARS} characters"),
            ),
            Some(Value::String(text)) => {
                self.payload.insert("prompt".into(), json!(text));
            }
            Some(_) => self.problem("prompt", "must be a string"),
            None => self.problem("prompt", "is required"),
        }
    }

    fn dimension(&mut self, field: &str, default: u64) {
        let value = match self.given(field) {
            None => default,
            Some(value) => match value.as_u64() {
                Some(n) if (256..=1440).contains(&n) && n % 32 == 0 => n,
                Some(n) if (256..=1440).contains(&n) => {
                    let lower = n / 32 * 32;
                    return self.problem(
                        field,
                        format!(
                            "must be a multiple of 32 (try {} or {})",
                            lower.max(256),
                            (lower + 32).min(1440)
                        ),
                    );
                }
                _ => {
                    return self.problem(
                        field,
                        "must be a whole number from 256 to 1440, a multiple of 32",
                    );
                }
            },
        };
        self.payload.insert(field.into(), json!(value));
    }

    /// FLUX.2's sides: 256 to 2048 (BFL's API takes 64 and up; 256 is the smallest help.bfl.ai documents), a
    /// multiple of 16.
    fn dimension16(&mut self, field: &str, default: u64) {
        let value = match self.given(field) {
            None => default,
            Some(value) => match value.as_u64() {
                Some(n) if (256..=2048).contains(&n) && n.is_multiple_of(16) => n,
                _ => {
                    return self.problem(
                        field,
                        "must be a whole number from 256 to 2048, a multiple of 16",
                    );
                }
            },
        };
        self.payload.insert(field.into(), json!(value));
    }

    fn integer(&mut self, field: &str, min: u64, max: u64, default: Option<u64>) {
        let value = match self.given(field) {
            None => default,
            Some(value) => match value.as_u64() {
                Some(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    return self
                        .problem(field, format!("must be a whole number from {min} to {max}"));
                }
            },
        };
        if let Some(value) = value {
            self.payload.insert(field.into(), json!(value));
        }
    }

    fn number(&mut self, field: &str, min: f64, max: f64, default: Option<f64>) {
        let value = match self.given(field) {
            None => default,
            Some(value) => match value.as_f64() {
                Some(n) if (min..=max).contains(&n) => Some(n),
                _ => return self.problem(field, format!("must be a number from {min} to {max}")),
            },
        };
        if let Some(value) = value {
            self.payload.insert(field.into(), json!(value));
        }
    }

    fn boolean(&mut self, field: &str, default: Option<bool>) {
        let value = match self.given(field) {
            None => default,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return self.problem(field, "must be true or false"),
        };
        if let Some(value) = value {
            self.payload.insert(field.into(), json!(value));
        }
    }

    fn output_format(&mut self, default: &str) {
        let value = match self.given("output_format") {
            None => default,
            Some(Value::String(f)) if f == "jpeg" || f == "png" => f.as_str(),
            Some(_) => return self.problem("output_format", "must be \"jpeg\" or \"png\""),
        };
        self.payload.insert("output_format".into(), json!(value));
    }

    /// `W:H` between 21:9 and 9:21, BFL's documented range.
    fn aspect_ratio(&mut self, default: Option<&str>) {
        let value = match self.given("aspect_ratio") {
            None => default.map(str::to_owned),
            Some(Value::String(text)) => {
                let parsed = text
                    .split_once(':')
                    .and_then(|(w, h)| {
                        Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?))
                    })
                    .filter(|(w, h)| *w > 0 && *h > 0);
                match parsed {
                    Some((w, h))
                        if f64::from(w) / f64::from(h) <= 21.0 / 9.0 + 1e-9
                            && f64::from(h) / f64::from(w) <= 21.0 / 9.0 + 1e-9 =>
                    {
                        Some(format!("{w}:{h}"))
                    }
                    Some(_) => {
                        return self.problem("aspect_ratio", "must lie between 21:9 and 9:21");
                    }
                    None => {
                        return self
                            .problem("aspect_ratio", "must be width:height, such as \"16:9\"");
                    }
                }
            }
            Some(_) => return self.problem("aspect_ratio", "must be a string such as \"16:9\""),
        };
        if let Some(value) = value {
            self.payload.insert("aspect_ratio".into(), json!(value));
        }
    }

    /// Base64 image data (a `data:` URL is taken without its prefix), or for Kontext also an http(s) URL.
    fn base64_image(&mut self, field: &str, required: bool, url_allowed: bool) {
        let text = match self.given(field) {
            None if required => return self.problem(field, "is required (the image to edit)"),
            None => return,
            Some(Value::String(text)) => text.trim(),
            Some(_) => return self.problem(field, "must be a string"),
        };
        if url_allowed && (text.starts_with("https://") || text.starts_with("http://")) {
            self.payload.insert(field.into(), json!(text));
            return;
        }
        let data = match text.split_once(";base64,") {
            Some((prefix, data)) if prefix.starts_with("data:image/") => data,
            Some(_) => return self.problem(field, "a data: URL must hold an image"),
            None => text,
        };
        use base64::Engine;
        if data.is_empty()
            || base64::engine::general_purpose::STANDARD
                .decode(data)
                .is_err()
        {
            let what = if url_allowed {
                "must be base64 image data, a data:image URL or an http(s) URL"
            } else {
                "must be base64 image data or a data:image URL"
            };
            return self.problem(field, what);
        }
        self.payload.insert(field.into(), json!(data));
    }
}
