//! Terminal commands other than `serve`, one file per command. Each returns the text to print, or an error
//! message; `main` prints and picks the exit code. Commands that need the running server call its API through
//! [`crate::client::ApiClient`], as the MCP server and the tests do.

mod doctor;
mod generate;
mod jobs;
mod paths;
mod service;
mod users;

pub use doctor::doctor;
pub use generate::{GenerateRequest, generate};
pub use jobs::{JobsAction, jobs};
pub use paths::{PathsAction, paths};
pub use service::{ServiceAction, describe, service};
pub use users::{UsersAction, users};

use serde_json::Value;

use crate::client::{ApiClient, Reply};
use crate::config::Config;

/// The running server's API (reached on loopback when it listens on every interface).
fn api(config: &Config) -> ApiClient {
    let token = config.token.as_ref().map(|t| t.expose().to_owned());
    ApiClient::for_server(config.bind, token)
}

/// A call that did not reach the server is an error; any answer is the caller's to read.
fn answered(reply: Reply) -> Result<Reply, String> {
    if reply.status == 0 {
        return Err(reply.message());
    }
    Ok(reply)
}

fn describe_error(answer: &Value) -> String {
    let error = &answer["error"];
    let mut text = error["message"].as_str().unwrap_or("failed").to_owned();
    if let Some(fields) = error["details"]["fields"].as_object() {
        for (field, problem) in fields {
            text.push_str(&format!("\n  {field}: {}", problem.as_str().unwrap_or("")));
        }
    }
    text
}
