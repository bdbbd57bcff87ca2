//! Everything that knows HTTP: the router, the guard and the request log. Handlers stay thin and call into the
//! domain modules.

pub mod builder;
pub mod comfy_money;
pub mod events;
pub mod extract;
pub mod files;
pub mod gallery;
pub mod gateway;
pub mod guard;
pub mod jobs;
pub mod model_paths;
pub mod openapi;
pub mod paid;
mod panic;
pub mod preview;
pub mod rate_limit;
pub mod request_log;
mod response;
pub mod router;
pub mod server;
pub mod system;
pub mod v2;
mod ws_relay;
