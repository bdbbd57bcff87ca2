//! `orchestrator jobs …`: list, show and cancel.

use super::{answered, api, describe_error};
use crate::client::encode;
use crate::config::Config;

/// `orchestrator jobs …`
#[derive(Debug, clap::Subcommand)]
pub enum JobsAction {
    /// The newest jobs first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One job, in full.
    Show { id: String },
    /// Cancel a queued or running job.
    Cancel { id: String },
}

pub async fn jobs(config: &Config, action: JobsAction) -> Result<String, String> {
    let (method, path) = match &action {
        JobsAction::List { status, limit } => {
            let status = status
                .as_deref()
                .map(|s| format!("&status={s}"))
                .unwrap_or_default();
            (
                reqwest::Method::GET,
                format!("/api/jobs?limit={limit}{status}"),
            )
        }
        JobsAction::Show { id } => (reqwest::Method::GET, format!("/api/jobs/{}", encode(id))),
        JobsAction::Cancel { id } => (
            reqwest::Method::POST,
            format!("/api/jobs/{}/cancel", encode(id)),
        ),
    };
    let reply = answered(api(config).call(method, &path, None, &[]).await)?;
    if !reply.is_success() {
        return Err(describe_error(&reply.body));
    }
    let answer = reply.body;
    Ok(match action {
        JobsAction::List { .. } => {
            let mut lines = vec![format!(
                "{:<36}  {:<15} {:>5}  {:<10} {}",
                "ID", "STATUS", "%", "TEMPLATE", "CREATED"
            )];
            for job in answer["jobs"].as_array().into_iter().flatten() {
                lines.push(format!(
                    "{:<36}  {:<15} {:>5.0}  {:<10} {}",
                    job["id"].as_str().unwrap_or(""),
                    job["status"].as_str().unwrap_or(""),
                    job["progress"].as_f64().unwrap_or(0.0),
                    job["template"].as_str().unwrap_or("-"),
                    job["created_at"].as_str().unwrap_or("")
                ));
            }
            lines.join("\n")
        }
        _ => serde_json::to_string_pretty(&answer).unwrap_or_default(),
    })
}
