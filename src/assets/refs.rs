//! `core/ASSET` references: `{"__type": "core/ASSET", "info": {"id": …}}` where a workflow would name an input
//! file. The workflow is stored with its references; each send to a ComfyUI uploads the bytes there and puts the
//! name ComfyUI gave them in their place, so the job runs on any backend it is sent to.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{AssetError, Assets, Found};
use crate::comfy::error::ComfyError;
use crate::comfy::proxy::ComfyGateway;

const TYPE: &str = "core/ASSET";

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the workflow names an asset that is not here: {0}")]
    Missing(String),
    #[error(transparent)]
    Comfy(#[from] ComfyError),
    #[error(transparent)]
    Asset(#[from] AssetError),
}

fn is_reference(value: &Value) -> bool {
    value.get("__type").and_then(Value::as_str) == Some(TYPE)
}

/// Each reference's asset id, or why it names none.
fn references(value: &Value, found: &mut Vec<Result<String, String>>) {
    if is_reference(value) {
        found.push(
            value["info"]["id"]
                .as_str()
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| "a core/ASSET reference without info.id".to_owned()),
        );
        return;
    }
    match value {
        Value::Object(map) => map.values().for_each(|v| references(v, found)),
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

/// Whether a workflow names any asset.
pub fn has_references(workflow: &Value) -> bool {
    let mut found = Vec::new();
    references(workflow, &mut found);
    !found.is_empty()
}

/// The workflow with every reference replaced by `names[id]`.
fn replaced(value: &Value, names: &BTreeMap<String, String>) -> Value {
    if is_reference(value)
        && let Some(name) = value["info"]["id"].as_str().and_then(|id| names.get(id))
    {
        return Value::String(name.clone());
    }
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), replaced(v, names)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| replaced(v, names)).collect()),
        other => other.clone(),
    }
}

/// A file name for the bytes on ComfyUI: the same for the same asset, so a resend does not pile up copies.
fn upload_name(found: &Found) -> String {
    // An upload by its content's hash; an output by its job and name.
    let (digest, name) = match found {
        Found::Uploaded(record) => (
            record.hash.trim_start_matches("blake3:").to_owned(),
            record.file_path.clone().unwrap_or_default(),
        ),
        Found::Output { job, file, .. } => (
            blake3::hash(format!("{}/{}", job.id, file.name).as_bytes())
                .to_hex()
                .to_string(),
            file.name.clone(),
        ),
    };
    let extension: String = name
        .rsplit_once('.')
        .map(|(_, ext)| ext)
        .unwrap_or("png")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("orchestrator-{}.{extension}", &digest[..16])
}

/// The reference to an asset, as a workflow carries it.
pub fn reference(record: &crate::store::AssetRecord) -> Value {
    serde_json::json!({
        "__type": TYPE,
        "info": { "id": record.id, "hash": record.hash, "file_path": record.file_path },
    })
}

impl Assets {
    /// The workflow as a confirmation binds it: each reference by the content it names (its blake3 hash), so two
    /// uploads of the same image are the same request, and another image is another.
    pub async fn bound(&self, workflow: &Value) -> Result<Value, AssetError> {
        let mut found = Vec::new();
        references(workflow, &mut found);
        let mut names = BTreeMap::new();
        for id in found.into_iter().flatten() {
            let content = match self.find(&id).await? {
                Some(Found::Uploaded(record)) => record.hash,
                Some(Found::Output { job, index, .. }) => format!("output:{}.{index}", job.id),
                None => format!("missing:{id}"),
            };
            names.insert(id, content);
        }
        Ok(replaced(workflow, &names))
    }

    /// The references of `workflow` that name no asset here (their ids, or what is wrong with them).
    pub async fn missing(&self, workflow: &Value) -> Result<Vec<String>, AssetError> {
        let mut found = Vec::new();
        references(workflow, &mut found);
        let mut missing = Vec::new();
        for reference in found {
            match reference {
                Ok(id) => {
                    // A record whose file is gone (an output deleted from disk) is as missing as no record.
                    let path = self.find(&id).await?.and_then(|found| self.path_of(&found));
                    let here = match path {
                        Some(path) => tokio::fs::try_exists(path).await.unwrap_or(false),
                        None => false,
                    };
                    if !here {
                        missing.push(id);
                    }
                }
                Err(problem) => missing.push(problem),
            }
        }
        Ok(missing)
    }

    /// `workflow` with each reference replaced by the name of its bytes on `gateway`'s ComfyUI, uploaded now;
    /// `None` when it has no reference.
    pub async fn resolve_for(
        &self,
        gateway: &ComfyGateway,
        workflow: &Value,
    ) -> Result<Option<Value>, ResolveError> {
        let mut found = Vec::new();
        references(workflow, &mut found);
        if found.is_empty() {
            return Ok(None);
        }
        let mut names = BTreeMap::new();
        for reference in found {
            let id = reference.map_err(ResolveError::Missing)?;
            if names.contains_key(&id) {
                continue;
            }
            let asset = self
                .find(&id)
                .await?
                .ok_or_else(|| ResolveError::Missing(id.clone()))?;
            let path = self
                .path_of(&asset)
                .ok_or_else(|| ResolveError::Missing(id.clone()))?;
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|_| ResolveError::Missing(id.clone()))?;
            let content_type = super::stored_media_type(match &asset {
                Found::Uploaded(record) => &record.content_type,
                Found::Output { file, .. } => &file.content_type,
            });
            let name = gateway
                .upload_image(bytes.into(), &upload_name(&asset), &content_type)
                .await?;
            names.insert(id, name);
        }
        Ok(Some(replaced(workflow, &names)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_found_anywhere_and_replaced_by_their_names() {
        let workflow = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "a"}}}},
            "2": {"class_type": "X", "inputs": {"list": [{"__type": "core/ASSET", "info": {"id": "b", "hash": "blake3:00"}}]}},
            "3": {"class_type": "Y", "inputs": {"bad": {"__type": "core/ASSET", "info": {}}, "other": {"__type": "x"}}}
        });
        let mut found = Vec::new();
        references(&workflow, &mut found);
        assert_eq!(
            found,
            vec![
                Ok("a".to_owned()),
                Ok("b".to_owned()),
                Err("a core/ASSET reference without info.id".to_owned())
            ]
        );
        let names = BTreeMap::from([
            ("a".to_owned(), "in-a.png".to_owned()),
            ("b".to_owned(), "in-b.png".to_owned()),
        ]);
        let done = replaced(&workflow, &names);
        assert_eq!(done["1"]["inputs"]["image"], "in-a.png");
        assert_eq!(done["2"]["inputs"]["list"][0], "in-b.png");
        assert_eq!(done["3"]["inputs"]["other"], json!({"__type": "x"}));
    }
}
