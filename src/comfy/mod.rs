//! Everything that talks to ComfyUI: the HTTP and WebSocket gateway and the model lists.

pub mod body;
pub mod model_paths;
pub mod models;
pub mod proxy;
pub mod ws;
