//! What a job is, as the API shows it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job's state. `backend_lost`: the backend no longer knows the job (it restarted or died); never `succeeded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Submitted,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    BackendLost,
    NeedsReconcile,
    /// A workflow with paid nodes, kept until a person approves its price (`POST /api/jobs/{id}/confirm`).
    AwaitingConfirmation,
}

impl JobStatus {
    /// Every status, in the order of a job's life (the order the job list's filter bar shows them in).
    pub const ALL: [Self; 9] = [
        Self::AwaitingConfirmation,
        Self::Queued,
        Self::Submitted,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::BackendLost,
        Self::NeedsReconcile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Submitted => "submitted",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::BackendLost => "backend_lost",
            Self::NeedsReconcile => "needs_reconcile",
            Self::AwaitingConfirmation => "awaiting_confirmation",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(Value::String(text.to_owned())).ok()
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::BackendLost
        )
    }

    /// Whether a job as JSON (an API answer, a stored event) is in a state that never changes again.
    pub fn is_final_json(job: &Value) -> bool {
        job["status"]
            .as_str()
            .and_then(Self::parse)
            .is_some_and(Self::is_final)
    }
}

/// What a job event says: the job's state changed (`state`), it progressed (`progress`), or it was sent to another
/// backend (`resubmitted`). The `event:` of the job event streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    State,
    Progress,
    Resubmitted,
    /// A new preview image of the running job (`GET /api/jobs/{id}/preview`).
    Preview,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::Progress => "progress",
            Self::Resubmitted => "resubmitted",
            Self::Preview => "preview",
        }
    }

    /// A stored kind; one this version does not know reads as `state` (the event still carries the whole job).
    pub fn parse(text: &str) -> Self {
        match text {
            "progress" => Self::Progress,
            "resubmitted" => Self::Resubmitted,
            "preview" => Self::Preview,
            _ => Self::State,
        }
    }
}

/// Where a job runs: a ComfyUI, or BFL's FLUX API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Comfy,
    Flux,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Comfy => "comfy",
            Self::Flux => "flux",
        }
    }

    /// A stored backend; anything but `flux` is a ComfyUI job (the only other kind there has been).
    pub fn parse(text: &str) -> Self {
        match text {
            "flux" => Self::Flux,
            _ => Self::Comfy,
        }
    }
}

/// A file a job produced, kept in `DATA_DIR/outputs/<job id>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputFile {
    pub name: String,
    pub url: String,
    pub content_type: String,
    pub size: u64,
    /// The workflow node that made it (ComfyUI jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    #[schema(value_type = String)]
    pub backend: Backend,
    pub status: JobStatus,
    /// 0 to 100.
    pub progress: f64,
    pub current_node: Option<String>,
    pub template: Option<String>,
    /// The parameters the job was made with (input images replaced by a note).
    #[schema(value_type = Object)]
    pub params: Value,
    /// `{code, message, …}` when it failed or was lost.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub outputs: Vec<OutputFile>,
    /// ComfyUI's id for the prompt, once submitted.
    pub comfy_prompt_id: Option<String>,
    pub backend_url: Option<String>,
    /// The paid provider's task id (FLUX), once it accepted the task.
    pub provider_id: Option<String>,
    /// Where the provider's task is polled; internal, as it is the provider's address, not the user's.
    #[serde(skip)]
    pub polling_url: Option<String>,
    /// What the job costs in US dollars, for paid backends: the price reserved when it was approved.
    pub cost_usd: Option<f64>,
    /// What it really cost: BFL's figure for FLUX; for ComfyUI's paid nodes, the sum of their calls through the
    /// Comfy.org egress (what Comfy.org reported, else each call's estimate), growing while they run.
    pub actual_cost_usd: Option<f64>,
    /// For a workflow with paid nodes: which nodes cost what (`paidNodes`, `estimatedCost`), the approval a
    /// person gives or gave.
    #[schema(value_type = Option<Object>)]
    pub approval: Option<Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// What a job's prompt says, for the gallery's search: a template's or FLUX's `prompt`, else the text inputs of
/// the workflow's nodes (CLIPTextEncode's `text`, API nodes' `prompt`), one per line.
pub fn prompt_text(params: &Value, workflow: &Value) -> Option<String> {
    if let Some(prompt) = params["prompt"].as_str().filter(|p| !p.trim().is_empty()) {
        return Some(prompt.to_owned());
    }
    let texts: Vec<&str> = workflow
        .as_object()
        .into_iter()
        .flat_map(|nodes| nodes.values())
        .flat_map(|node| ["text", "prompt"].map(|input| node["inputs"][input].as_str()))
        .flatten()
        .filter(|text| !text.trim().is_empty())
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

/// What a person may do, each role all that the one before it may: see the team's work, run free work and ask for
/// paid work, confirm paid work (anyone's), and run the studio (settings, the service, people).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Generator,
    Approver,
    Admin,
}

impl Role {
    pub const ALL: [Self; 4] = [Self::Viewer, Self::Generator, Self::Approver, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Generator => "generator",
            Self::Approver => "approver",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

/// A person of the studio, as the store keeps them (never their password's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Person {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// When they were disabled; a disabled person signs in nowhere and their sessions and tokens open nothing.
    pub disabled_at: Option<String>,
    pub created_at: String,
    /// Whether a password is set (a person who signs in only through single sign-on has none).
    pub has_password: bool,
}
