//! Workflow templates: API-format workflows with a manifest naming their parameters (see
//! `workflows/api/README.md`). The built-in ones are compiled into the binary; a parameter's value is only ever
//! written into the literal inputs its manifest names, so no value can change the graph's shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::comfy::models::ModelLists;

#[derive(rust_embed::Embed)]
#[folder = "workflows/api/"]
struct Builtin;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    String,
    Int,
    Float,
    Choice,
    Model,
    Image,
}

/// The sections of the generation form, in the order it shows them; `advanced` is folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Main,
    Size,
    Sampling,
    Advanced,
}

/// One parameter of a template.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = TemplateParam)]
pub struct Param {
    #[serde(rename = "type")]
    pub kind: ParamKind,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub min: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub max: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiple_of: Option<u64>,
    /// For choices: the node and input of ComfyUI's definition that lists them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub choices_from: Option<(String, String)>,
    /// For models: the folder (as `/api/models` names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// English help (a template of one's own may give this rather than `help`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The form's label, per panel language (`{"en": "Steps", "ru": "Шаги"}`); without one the name is shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label: BTreeMap<String, String>,
    /// The form's help text, per panel language.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub help: BTreeMap<String, String>,
    /// Where the form shows it; without one, required fields and prompts are `main`, the rest `advanced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// Its place in its group, smallest first (then by name).
    #[serde(default)]
    pub order: i32,
    /// `[node id, input name]` pairs the value is written to.
    #[schema(value_type = Vec<Vec<String>>)]
    pub targets: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = TemplateManifest)]
pub struct Manifest {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// `image` or `video`.
    pub output: String,
    /// Width × height pairs the form offers for the model family (SDXL: 1024×1024, 1152×896, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub size_presets: Vec<[u32; 2]>,
    pub params: BTreeMap<String, Param>,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub manifest: Manifest,
    pub workflow: Value,
}

#[derive(Debug, Default)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
}

impl Templates {
    /// The templates compiled into the binary.
    pub fn builtin() -> Self {
        let mut templates = Self::default();
        for file in Builtin::iter().filter(|f| f.ends_with(".manifest.json")) {
            let workflow_file = file.replace(".manifest.json", ".json");
            let (Some(manifest), Some(workflow)) =
                (Builtin::get(&file), Builtin::get(&workflow_file))
            else {
                continue;
            };
            match (
                serde_json::from_slice::<Manifest>(&manifest.data),
                serde_json::from_slice::<Value>(&workflow.data),
            ) {
                (Ok(manifest), Ok(workflow)) => {
                    templates
                        .by_name
                        .insert(manifest.name.clone(), Template { manifest, workflow });
                }
                (manifest, workflow) => {
                    tracing::error!(file = %file, manifest_ok = manifest.is_ok(), workflow_ok = workflow.is_ok(), "a built-in template does not parse");
                }
            }
        }
        templates
    }

    /// The built-in templates plus those in `dir` (`<name>.json` with `<name>.manifest.json`); a template of the
    /// folder replaces a built-in one of the same name. Answers the problems found in the folder, one per file.
    pub fn with_folder(dir: &std::path::Path) -> (Self, Vec<String>) {
        let mut templates = Self::builtin();
        let mut problems = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => return (templates, vec![format!("{}: {error}", dir.display())]),
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = file.strip_suffix(".manifest.json") else {
                continue;
            };
            let workflow_path = path.with_file_name(format!("{stem}.json"));
            let read =
                |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let loaded = read(&path).and_then(|manifest| {
                let manifest: Manifest = serde_json::from_slice(&manifest).map_err(|e| format!("{}: {e}", path.display()))?;
                let workflow: Value = serde_json::from_slice(&read(&workflow_path)?)
                    .map_err(|e| format!("{}: {e}", workflow_path.display()))?;
                for (key, param) in &manifest.params {
                    for (node, input) in &param.targets {
                        match workflow.get(node).and_then(|n| n.get("inputs")).and_then(|i| i.get(input)) {
                            None => return Err(format!("{}: parameter {key} targets {node}.{input}, which the workflow lacks", path.display())),
                            // A link (or anything but a literal) replaced by a value would change the graph.
                            Some(Value::Array(_) | Value::Object(_)) => return Err(format!("{}: parameter {key} targets {node}.{input}, which is a link, not a literal", path.display())),
                            Some(_) => {}
                        }
                    }
                }
                Ok(Template { manifest, workflow })
            });
            match loaded {
                Ok(template) => {
                    templates
                        .by_name
                        .insert(template.manifest.name.clone(), template);
                }
                Err(problem) => problems.push(problem),
            }
        }
        (templates, problems)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.by_name.get(name)
    }

    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.by_name.values().map(|t| &t.manifest)
    }

    /// The template's workflow with `params` applied, or every problem as `{"params.<name>": "why"}`. When `models`
    /// is known, a model parameter must name a file ComfyUI has.
    pub fn instantiate(
        &self,
        name: &str,
        params: &Value,
        models: Option<&ModelLists>,
    ) -> Result<Value, Map<String, Value>> {
        let mut problems = Map::new();
        let Some(template) = self.by_name.get(name) else {
            let known = self.names().collect::<Vec<_>>().join(", ");
            problems.insert(
                "template".into(),
                json!(format!("unknown template {name:?}; known: {known}")),
            );
            return Err(problems);
        };
        let given = params.as_object().cloned().unwrap_or_default();
        for key in given.keys() {
            if !template.manifest.params.contains_key(key) {
                let known = template
                    .manifest
                    .params
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                problems.insert(
                    format!("params.{key}"),
                    json!(format!("unknown parameter; {name} takes: {known}")),
                );
            }
        }
        let mut workflow = template.workflow.clone();
        for (key, param) in &template.manifest.params {
            let value = match given
                .get(key)
                .filter(|v| !v.is_null())
                .or(param.default.as_ref())
            {
                Some(value) => value,
                None if param.required => {
                    problems.insert(format!("params.{key}"), json!("required"));
                    continue;
                }
                None => continue,
            };
            if let Err(problem) = check(param, value, models) {
                problems.insert(format!("params.{key}"), json!(problem));
                continue;
            }
            for (node, input) in &param.targets {
                if let Some(inputs) = workflow
                    .get_mut(node)
                    .and_then(|n| n.get_mut("inputs"))
                    .and_then(Value::as_object_mut)
                {
                    inputs.insert(input.clone(), value.clone());
                }
            }
        }
        if problems.is_empty() {
            Ok(workflow)
        } else {
            Err(problems)
        }
    }
}

fn check(param: &Param, value: &Value, models: Option<&ModelLists>) -> Result<(), String> {
    match param.kind {
        ParamKind::String | ParamKind::Choice | ParamKind::Image | ParamKind::Model => {
            let Some(text) = value.as_str() else {
                return Err("must be a string".into());
            };
            if matches!(
                param.kind,
                ParamKind::Image | ParamKind::Model | ParamKind::Choice
            ) && text.trim().is_empty()
            {
                return Err("must not be empty".into());
            }
            if let (ParamKind::Model, Some(folder), Some(models)) =
                (param.kind, &param.folder, models)
                && let Some(files) = models.folder(folder)
                && !files.iter().any(|f| f == text)
            {
                let shown = if files.is_empty() {
                    "none".to_owned()
                } else {
                    files.join(", ")
                };
                return Err(format!(
                    "ComfyUI has no {folder} file named {text:?} (it has: {shown})"
                ));
            }
            Ok(())
        }
        ParamKind::Int => {
            let number = value
                .as_u64()
                .map(i128::from)
                .or_else(|| value.as_i64().map(i128::from));
            let Some(number) = number else {
                return Err("must be a whole number".into());
            };
            let bound = |n: &Option<serde_json::Number>| {
                n.as_ref().and_then(|n| {
                    n.as_u64()
                        .map(i128::from)
                        .or_else(|| n.as_i64().map(i128::from))
                })
            };
            if let Some(min) = bound(&param.min)
                && number < min
            {
                return Err(format!("must be at least {min}"));
            }
            if let Some(max) = bound(&param.max)
                && number > max
            {
                return Err(format!("must be at most {max}"));
            }
            if let Some(step) = param.multiple_of.filter(|s| *s > 1)
                && number % i128::from(step) != 0
            {
                return Err(format!("must be a multiple of {step}"));
            }
            Ok(())
        }
        ParamKind::Float => {
            let Some(number) = value.as_f64() else {
                return Err("must be a number".into());
            };
            if let Some(min) = param.min.as_ref().and_then(serde_json::Number::as_f64)
                && number < min
            {
                return Err(format!("must be at least {min}"));
            }
            if let Some(max) = param.max.as_ref().and_then(serde_json::Number::as_f64)
                && number > max
            {
                return Err(format!("must be at most {max}"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
