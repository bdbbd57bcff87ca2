//! The node classes the fake lists (`/object_info`): the recorded ones, with this instance's models, and those a
//! test adds.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{FakeComfy, Shared};

impl FakeComfy {
    /// Lists a node class in `/object_info` (a custom node, or a newer ComfyUI's class with its `price_badge`).
    pub fn add_class(&self, name: &str, info: Value) {
        let mut listed = self.shared.object_info.write().unwrap();
        let mut next = (**listed).clone();
        next[name] = info;
        *listed = Arc::new(next);
    }
}

impl Shared {
    pub(super) fn object_info(&self) -> Arc<Value> {
        self.object_info.read().unwrap().clone()
    }
}

pub(super) async fn object_info_one(
    State(shared): State<Arc<Shared>>,
    Path(class): Path<String>,
) -> Response {
    match shared.object_info().get(&class) {
        Some(info) => axum::Json(json!({ class: info })).into_response(),
        // The real server answers an unknown class with `{}` and 200.
        None => axum::Json(json!({})).into_response(),
    }
}
