//! A job request made into a [`Submission`]: a template's parameters checked and written into its workflow (input
//! images given as `data:` URLs kept as assets, referenced where the template takes them), or a raw workflow's
//! shape checked (one check for the v1 and v2 APIs, each wording its answer); and "generate again", a template's
//! job once more with a new seed.

use serde_json::{Map, Value, json};

use super::runner::{JobError, Jobs};
use super::submit::{Submission, Submitted};
use super::templates::{ParamKind, Templates};
use crate::comfy::models::ModelLists;
use crate::model::Backend;
use crate::money::refusal::Refusal;
use crate::problems::Invalid;

/// The largest input image accepted as a data URL.
const MAX_IMAGE_BYTES: usize = 50 * 1024 * 1024;

/// What is wrong with a node of a raw workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeProblem {
    /// No `class_type` (or an empty one): the editor's UI format, most likely.
    NoClass,
    /// `inputs` is there and not an object.
    InputsNotAnObject,
}

/// A raw workflow's shape: what an API-format workflow (an object of nodes, each with a `class_type` and
/// `inputs`) must be.
#[derive(Debug, Default)]
pub struct Shape {
    /// Not an object, or one without nodes.
    pub empty: bool,
    /// The editor's export (`nodes` and `links`) rather than the API format.
    pub ui_export: bool,
    /// Each node's problems, in the workflow's order.
    pub nodes: Vec<(String, NodeProblem)>,
}

impl Shape {
    pub fn of(workflow: &Value) -> Self {
        let Some(nodes) = workflow.as_object().filter(|n| !n.is_empty()) else {
            return Self {
                empty: true,
                ..Self::default()
            };
        };
        let mut problems = Vec::new();
        for (id, node) in nodes {
            if node["class_type"].as_str().is_none_or(str::is_empty) {
                problems.push((id.clone(), NodeProblem::NoClass));
            }
            if node.get("inputs").is_some_and(|i| !i.is_object()) {
                problems.push((id.clone(), NodeProblem::InputsNotAnObject));
            }
        }
        Self {
            empty: false,
            ui_export: workflow["nodes"].is_array() && workflow.get("links").is_some(),
            nodes: problems,
        }
    }

    pub fn is_sound(&self) -> bool {
        !self.empty && !self.ui_export && self.nodes.is_empty()
    }
}

/// A `POST /api/jobs` request, as the client sent it.
pub struct Request {
    pub template: Option<String>,
    pub workflow: Option<Value>,
    pub params: Option<Value>,
    pub dry_run: bool,
    pub token: Option<String>,
    /// The person's cap on a paid run, in dollars.
    pub max_usd: Option<f64>,
    pub idempotency_key: Option<String>,
}

fn invalid(field: &str, problem: impl Into<String>) -> JobError {
    Refusal::invalid(field, problem).into()
}

/// The submission a request makes: a template instantiated (`lists`: the models ComfyUI has, when it answered)
/// or a raw workflow whose shape is sound.
pub async fn submission(
    jobs: &Jobs,
    templates: &Templates,
    lists: Option<&ModelLists>,
    request: Request,
) -> Result<Submission, JobError> {
    let mut params = request.params.unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return Err(invalid("params", "must be an object"));
    }
    let images = match &request.template {
        Some(name) => take_images(templates, name, &mut params)?,
        None => Vec::new(),
    };
    let (template, workflow) = match (request.template, request.workflow) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "workflow",
                "give either a template or a workflow, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "template",
                "give a template name or an API-format workflow",
            ));
        }
        (None, Some(workflow)) => {
            check_v1_shape(&workflow)?;
            (None, workflow)
        }
        (Some(name), None) => {
            let mut workflow = templates
                .instantiate(&name, &params, lists)
                .map_err(|fields| JobError::from(Refusal::Invalid(Invalid(fields))))?;
            keep_images(jobs, images, &mut workflow).await?;
            (Some(name), workflow)
        }
    };
    Ok(Submission {
        template,
        params,
        workflow,
        dry_run: request.dry_run,
        token: request.token,
        max_micros: crate::money::cap_micros(request.max_usd)?,
        idempotency_key: request.idempotency_key,
    })
}

/// The v1 API's words for a workflow's shape: a field per node problem.
fn check_v1_shape(workflow: &Value) -> Result<(), JobError> {
    let shape = Shape::of(workflow);
    if shape.empty {
        return Err(invalid(
            "workflow",
            "must be a non-empty object of nodes (ComfyUI's API format)",
        ));
    }
    let mut fields = Map::new();
    for (id, problem) in &shape.nodes {
        let (field, words) = match problem {
            NodeProblem::NoClass => (
                format!("workflow.{id}.class_type"),
                "missing: is this the UI format? Export with \"Save (API)\"",
            ),
            NodeProblem::InputsNotAnObject => {
                (format!("workflow.{id}.inputs"), "must be an object")
            }
        };
        fields.insert(field, json!(words));
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Invalid(Invalid(fields)).into())
    }
}

/// An image parameter given as a `data:` URL, decoded.
struct Image {
    bytes: bytes::Bytes,
    file_name: String,
    content_type: String,
    /// The `[node, input]` pairs that take it.
    targets: Vec<(String, String)>,
}

/// Image parameters given as `data:` URLs, decoded. In the stored parameters the data is replaced by a short note,
/// so the store never holds megabytes of base64.
fn take_images(
    templates: &Templates,
    template: &str,
    params: &mut Value,
) -> Result<Vec<Image>, JobError> {
    let Some(template) = templates.get(template) else {
        return Ok(Vec::new());
    };
    let mut images = Vec::new();
    let mut fields = Map::new();
    for (key, param) in &template.manifest.params {
        if param.kind != ParamKind::Image {
            continue;
        }
        let Some(url) = params
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| v.starts_with("data:"))
        else {
            continue;
        };
        match decode_data_url(url) {
            Ok((content_type, bytes)) => {
                let extension = content_type
                    .strip_prefix("image/")
                    .unwrap_or("png")
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "");
                let digest = blake3::hash(&bytes).to_hex();
                let file_name = format!("orchestrator-{}.{extension}", &digest[..16]);
                params[key] = json!(format!("upload:{file_name}"));
                images.push(Image {
                    bytes: bytes.into(),
                    file_name,
                    content_type,
                    targets: param.targets.clone(),
                });
            }
            Err(problem) => {
                fields.insert(format!("params.{key}"), json!(problem));
            }
        }
    }
    if fields.is_empty() {
        Ok(images)
    } else {
        Err(Refusal::Invalid(Invalid(fields)).into())
    }
}

/// Keeps each image as an asset and puts its reference where the template takes it: the bytes go to whichever
/// ComfyUI the job is sent to, each time it is sent (a job moved on failover finds them there too).
async fn keep_images(
    jobs: &Jobs,
    images: Vec<Image>,
    workflow: &mut Value,
) -> Result<(), JobError> {
    for image in images {
        let placement = crate::assets::Placement {
            content_type: image.content_type,
            file_path: Some(image.file_name),
            tags: vec!["input".into()],
        };
        let record = jobs.assets().keep(image.bytes, placement).await?;
        for (node, input) in &image.targets {
            if let Some(inputs) = workflow
                .get_mut(node)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(Value::as_object_mut)
            {
                inputs.insert(input.clone(), crate::assets::refs::reference(&record));
            }
        }
    }
    Ok(())
}

/// `data:<type>;base64,<data>` → (type, bytes).
fn decode_data_url(url: &str) -> Result<(String, Vec<u8>), String> {
    use base64::Engine;
    let (head, data) = url
        .strip_prefix("data:")
        .and_then(|u| u.split_once(','))
        .ok_or("not a data: URL")?;
    let given = head
        .strip_suffix(";base64")
        .ok_or("only base64 data: URLs are accepted")?;
    let content_type = crate::assets::media_type(given)
        .filter(|t| t.type_() == mime::IMAGE)
        .ok_or_else(|| {
            format!(
                "an image is expected, not {:?}",
                given.chars().take(64).collect::<String>()
            )
        })?;
    if data.len() / 4 * 3 > MAX_IMAGE_BYTES {
        return Err(format!("larger than {} MiB", MAX_IMAGE_BYTES / 1024 / 1024));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("not valid base64: {e}"))?;
    Ok((content_type.essence_str().to_owned(), bytes))
}

/// A fresh seed for "generate again".
fn new_seed() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_u64_pair().0 as u32)
}

/// `POST /api/jobs/{id}/again`: a template's job once more, with its parameters and a new seed: its stored
/// workflow (input images still named by their assets) with the seed's inputs rewritten.
pub async fn again(jobs: &Jobs, templates: &Templates, id: &str) -> Result<Submitted, JobError> {
    let store = jobs.store();
    let job = store
        .job(id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.chars().take(64).collect()))?;
    // A FLUX job's stored "workflow" is BFL's payload, and paid: it goes again through FLUX, with its own price
    // and confirmation, never to ComfyUI as a graph.
    if job.backend != Backend::Comfy {
        return Err(invalid(
            "backend",
            "only a ComfyUI job is generated again here; a FLUX job is asked for again with POST /api/flux/generate, \
             with its price and confirmation",
        ));
    }
    let Some(name) = job.template.clone() else {
        return Err(invalid(
            "template",
            "only a template's job can be generated again",
        ));
    };
    let mut workflow = store
        .workflow(id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.chars().take(64).collect()))?;
    let mut values = job.params.clone();
    let seed = templates
        .get(&name)
        .and_then(|template| template.manifest.params.get("seed"));
    if let Some(seed) = seed {
        let value = new_seed();
        for (node, input) in &seed.targets {
            if let Some(inputs) = workflow[node.as_str()]["inputs"].as_object_mut() {
                inputs.insert(input.clone(), json!(value));
            }
        }
        values["seed"] = json!(value);
    }
    let submission = Submission {
        template: Some(name),
        params: values,
        workflow,
        dry_run: false,
        token: None,
        max_micros: None,
        idempotency_key: None,
    };
    jobs.submit(submission).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflows_shape_names_each_node_problem() {
        let shape = Shape::of(&json!({
            "1": { "class_type": "SaveImage", "inputs": {} },
            "2": { "inputs": 3 },
            "3": { "class_type": "" },
        }));
        assert!(!shape.is_sound() && !shape.empty && !shape.ui_export);
        assert_eq!(
            shape.nodes,
            [
                ("2".to_owned(), NodeProblem::NoClass),
                ("2".to_owned(), NodeProblem::InputsNotAnObject),
                ("3".to_owned(), NodeProblem::NoClass),
            ]
        );
        assert!(Shape::of(&json!({})).empty && Shape::of(&json!([1])).empty);
        assert!(Shape::of(&json!({ "nodes": [], "links": [] })).ui_export);
        assert!(Shape::of(&json!({ "9": { "class_type": "SaveImage" } })).is_sound());
    }
}
