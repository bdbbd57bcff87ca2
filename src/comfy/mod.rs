//! Everything that talks to ComfyUI: the HTTP and WebSocket gateway, the model lists, which node classes cost
//! money, and the Comfy.org credentials that never leave the server.

pub mod api;
pub mod body;
pub mod credentials;
pub mod error;
pub mod fan_out;
pub mod model_paths;
pub mod models;
pub mod nodes;
pub mod prompt;
pub mod proxy;
pub mod routes;
pub mod ws;
