//! The model files ComfyUI can load, per folder, read from the loader nodes' combo options in `/object_info`
//! (ComfyUI has no single "list every model" route that covers all folders the same way).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;

use super::error::ComfyError;
use super::nodes::NodeCatalog;
use super::proxy::ComfyGateway;

/// Where each folder's list comes from: (folder, loader node, input name).
pub const SOURCES: [(&str, &str, &str); 8] = [
    ("checkpoints", "CheckpointLoaderSimple", "ckpt_name"),
    ("loras", "LoraLoader", "lora_name"),
    ("controlnet", "ControlNetLoader", "control_net_name"),
    ("vae", "VAELoader", "vae_name"),
    ("upscale_models", "UpscaleModelLoader", "model_name"),
    ("clip", "CLIPLoader", "clip_name"),
    ("clip_vision", "CLIPVisionLoader", "clip_name"),
    ("diffusion_models", "UNETLoader", "unet_name"),
];

/// Choices ComfyUI adds to a loader's list that are not files.
const VIRTUAL_ENTRIES: [&str; 1] = ["pixel_space"];

/// How long a scan stays fresh; `?refresh=1` forces a new one.
const FRESH_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ModelLists {
    pub checkpoints: Vec<String>,
    pub loras: Vec<String>,
    pub controlnet: Vec<String>,
    pub vae: Vec<String>,
    pub upscale_models: Vec<String>,
    pub clip: Vec<String>,
    pub clip_vision: Vec<String>,
    pub diffusion_models: Vec<String>,
    pub embeddings: Vec<String>,
}

impl ModelLists {
    /// Reads the lists out of `/object_info` and `/embeddings` answers.
    pub fn from_object_info(object_info: &Value, embeddings: &Value) -> Self {
        let mut lists = Self::default();
        for (folder, node, input) in SOURCES {
            let options = object_info
                .get(node)
                .and_then(|n| n.pointer(&format!("/input/required/{input}")))
                .map(combo_options)
                .unwrap_or_default();
            *lists.folder_mut(folder) = options;
        }
        lists.embeddings = string_list(embeddings);
        lists
    }

    /// The files of a folder as `/api/models` names it (`text_encoders` reads as `clip`).
    pub fn folder(&self, folder: &str) -> Option<&Vec<String>> {
        Some(match folder {
            "checkpoints" => &self.checkpoints,
            "loras" => &self.loras,
            "controlnet" => &self.controlnet,
            "vae" => &self.vae,
            "upscale_models" => &self.upscale_models,
            "clip" | "text_encoders" => &self.clip,
            "clip_vision" => &self.clip_vision,
            "diffusion_models" | "unet" => &self.diffusion_models,
            "embeddings" => &self.embeddings,
            _ => return None,
        })
    }

    fn folder_mut(&mut self, folder: &str) -> &mut Vec<String> {
        match folder {
            "checkpoints" => &mut self.checkpoints,
            "loras" => &mut self.loras,
            "controlnet" => &mut self.controlnet,
            "vae" => &mut self.vae,
            "upscale_models" => &mut self.upscale_models,
            "clip" => &mut self.clip,
            "clip_vision" => &mut self.clip_vision,
            "diffusion_models" => &mut self.diffusion_models,
            _ => unreachable!("SOURCES names only the fields above"),
        }
    }
}

/// The options of a combo input, in either of ComfyUI's shapes: V1 `[["a", "b"], {…}]` or V3
/// `["COMBO", {"options": ["a", "b"]}]`.
pub fn combo_options(spec: &Value) -> Vec<String> {
    let first = spec.get(0);
    let options = match first {
        Some(Value::Array(_)) => first,
        Some(Value::String(kind)) if kind == "COMBO" => spec.get(1).and_then(|o| o.get("options")),
        _ => None,
    };
    options
        .map(string_list)
        .unwrap_or_default()
        .into_iter()
        .filter(|o| !VIRTUAL_ENTRIES.contains(&o.as_str()))
        .collect()
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One backend's last scan of `/object_info`: its model lists and its node classes (which of them cost money).
pub struct Scan {
    pub lists: Arc<ModelLists>,
    pub nodes: Arc<NodeCatalog>,
}

type Slot = Arc<Mutex<Option<(Instant, Arc<Scan>)>>>;

/// The last scan of each backend, shared; a backend's lock also makes concurrent misses wait for one scan instead
/// of each starting one.
#[derive(Default)]
pub struct ModelCache {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

impl ModelCache {
    fn slot(&self, gateway: &ComfyGateway) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(gateway.backend().origin())
            .or_default()
            .clone()
    }

    /// The backend's model lists, scanned again when older than a minute or when `refresh` asks.
    pub async fn get(
        &self,
        gateway: &ComfyGateway,
        refresh: bool,
    ) -> Result<Arc<ModelLists>, ComfyError> {
        match self.scan(gateway, refresh).await {
            Ok(scan) => Ok(scan.lists.clone()),
            Err(ComfyError::Timeout { upstream, .. } | ComfyError::Unreachable { upstream }) => {
                Err(ComfyError::Offline {
                    upstream,
                    what: "the model lists cannot be read",
                })
            }
            Err(other) => Err(other),
        }
    }

    /// The backend's node classes, fresh as [`ModelCache::get`]; when the backend does not answer, its last
    /// known classes (ComfyUI loads its nodes at start-up, so they change only with a restart).
    pub async fn nodes(&self, gateway: &ComfyGateway) -> Result<Arc<NodeCatalog>, ComfyError> {
        match self.scan(gateway, false).await {
            Ok(scan) => Ok(scan.nodes.clone()),
            Err(error) => match self.slot(gateway).lock().await.as_ref() {
                Some((_, scan)) => Ok(scan.nodes.clone()),
                None => Err(error),
            },
        }
    }

    /// The node classes of any backend scanned before, for a job recorded while none answers.
    pub async fn any_known_nodes(&self) -> Option<Arc<NodeCatalog>> {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            if let Some((_, scan)) = slot.lock().await.as_ref() {
                return Some(scan.nodes.clone());
            }
        }
        None
    }

    async fn scan(&self, gateway: &ComfyGateway, refresh: bool) -> Result<Arc<Scan>, ComfyError> {
        let slot = self.slot(gateway);
        let mut last = slot.lock().await;
        if let Some((at, scan)) = last.as_ref()
            && !refresh
            && at.elapsed() < FRESH_FOR
        {
            return Ok(scan.clone());
        }
        let (object_info, embeddings) =
            tokio::try_join!(gateway.object_info(), gateway.embeddings(),)?;
        let scan = Arc::new(Scan {
            lists: Arc::new(ModelLists::from_object_info(&object_info, &embeddings)),
            nodes: Arc::new(NodeCatalog::from_object_info(&object_info)),
        });
        *last = Some((Instant::now(), scan.clone()));
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_combo_shapes() {
        assert_eq!(
            combo_options(&json!([["a.safetensors", "b.ckpt"], {"tooltip": "x"}])),
            ["a.safetensors", "b.ckpt"]
        );
        assert_eq!(
            combo_options(&json!(["COMBO", {"options": ["up.pth"], "multiselect": false}])),
            ["up.pth"]
        );
        assert!(combo_options(&json!(["INT", {"min": 0}])).is_empty());
        assert!(
            combo_options(&json!([["pixel_space"]])).is_empty(),
            "virtual entries are not files"
        );
    }

    #[test]
    fn recorded_object_info_yields_every_folder() {
        let raw = include_str!("../../tests/fixtures/comfyui/object_info.json");
        let mut info: Value = serde_json::from_str(raw).unwrap();
        info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] =
            json!(["sdxl.safetensors"]);
        info["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"] =
            json!(["4x.pth"]);
        let lists = ModelLists::from_object_info(&info, &json!(["easyneg"]));
        assert_eq!(lists.checkpoints, ["sdxl.safetensors"]);
        assert_eq!(lists.upscale_models, ["4x.pth"]);
        assert_eq!(lists.embeddings, ["easyneg"]);
        assert!(lists.vae.is_empty());
    }
}
