//! ComfyUI's HTTP API as Orchestrator calls it, typed: the one place that names its routes (`/prompt`, `/queue`,
//! `/history`, `/interrupt`, `/view`, `/object_info`, `/embeddings`, `/system_stats`; `/upload/image` is
//! [`ComfyGateway::upload_image`]) and reads their JSON. What a client sends through the gateway is relayed as it
//! is, by `proxy`; this is Orchestrator's own use.

use serde_json::{Value, json};

use super::error::ComfyError;
use super::proxy::ComfyGateway;

/// The most of a queue or a history read whole: a long queue of large workflows.
const LISTING_MAX_BYTES: usize = 64 * 1024 * 1024;
/// `GET /prompt`: `{"exec_info": {"queue_remaining": n}}`.
const QUEUE_INFO_MAX_BYTES: usize = 64 * 1024;
/// `/object_info` is about 0.7 MB on a stock install and grows with custom nodes; this bounds a broken answer.
const OBJECT_INFO_MAX_BYTES: usize = 64 * 1024 * 1024;
const SYSTEM_STATS_MAX_BYTES: usize = 1024 * 1024;

/// Where a prompt's `extra_data` names the job it runs: how a prompt is found again after a crash cut off its
/// submit, and how the gateway's own prompts are told from a client's.
const JOB_KEY: &str = "orchestrator_job";

/// A prompt in ComfyUI's queue (`[number, prompt_id, prompt, extra_data, outputs_to_execute]`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedPrompt {
    pub prompt_id: String,
    /// The job Orchestrator posted it for, when it was.
    pub job_id: Option<String>,
}

impl QueuedPrompt {
    fn from_item(item: &Value) -> Option<Self> {
        Some(Self {
            prompt_id: item.get(1)?.as_str()?.to_owned(),
            job_id: item
                .get(3)
                .and_then(|extra| extra[JOB_KEY].as_str())
                .map(str::to_owned),
        })
    }
}

/// ComfyUI's queue: the prompts running and those waiting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queue {
    pub running: Vec<QueuedPrompt>,
    pub pending: Vec<QueuedPrompt>,
}

impl Queue {
    fn from_json(queue: &Value) -> Self {
        let read = |key: &str| {
            queue[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(QueuedPrompt::from_item)
                .collect()
        };
        Self {
            running: read("queue_running"),
            pending: read("queue_pending"),
        }
    }

    pub fn is_running(&self, prompt_id: &str) -> bool {
        self.running.iter().any(|p| p.prompt_id == prompt_id)
    }

    pub fn is_pending(&self, prompt_id: &str) -> bool {
        self.pending.iter().any(|p| p.prompt_id == prompt_id)
    }

    /// Whether the prompt is running or waiting.
    pub fn holds(&self, prompt_id: &str) -> bool {
        self.is_running(prompt_id) || self.is_pending(prompt_id)
    }

    /// Every prompt, running first.
    pub fn prompts(&self) -> impl Iterator<Item = &QueuedPrompt> {
        self.running.iter().chain(&self.pending)
    }
}

/// ComfyUI's history: finished prompts by id.
#[derive(Debug, Clone, Default)]
pub struct History(serde_json::Map<String, Value>);

impl History {
    /// The prompt posted for job `job_id`, by the job's id in its `extra_data`.
    pub fn posted_for_job(&self, job_id: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(_, entry)| entry["prompt"][3][JOB_KEY] == job_id)
            .map(|(prompt_id, _)| prompt_id.clone())
    }
}

/// The Comfy.org API base a ComfyUI command line gives (`--comfy-api-base URL` or `--comfy-api-base=URL`, as
/// `comfy/cli_args.py` reads it); `/system_stats` shows a running ComfyUI's command line as `system.argv`.
pub fn comfy_api_base<S: AsRef<str>>(argv: &[S]) -> Option<String> {
    let mut args = argv.iter().map(AsRef::as_ref);
    let mut found = None;
    while let Some(arg) = args.next() {
        if arg == "--comfy-api-base" {
            found = args.next().map(str::to_owned);
        } else if let Some(value) = arg.strip_prefix("--comfy-api-base=") {
            found = Some(value.to_owned());
        }
    }
    found
}

/// Whether a Comfy.org API base is an Orchestrator's egress (this one's, or a fleet instance's).
pub fn is_egress(base: &str) -> bool {
    base.trim_end_matches('/')
        .ends_with(crate::config::Config::EGRESS_PATH)
}

/// A prompt for `POST /prompt`, under an id Orchestrator chose.
pub struct PromptRequest<'a> {
    pub workflow: &'a Value,
    pub prompt_id: &'a str,
    /// The WebSocket client its messages go to.
    pub client_id: &'a str,
    pub job_id: &'a str,
    /// `extra_data`'s Comfy.org credential, for an approved paid prompt alone.
    pub comfy_org_key: Option<&'a str>,
}

/// A `POST /prompt` that did not queue the prompt as asked.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: u16,
    /// ComfyUI's `error.message`, else a sentence saying it did not accept the workflow.
    pub message: String,
    /// `{comfy_status, error, node_errors}`, for the job's error.
    pub details: Value,
}

/// What ComfyUI answered a `POST /prompt` it received.
#[derive(Debug, Clone)]
pub enum Posted {
    Accepted {
        prompt_id: String,
    },
    /// ComfyUI's own refusal (400 with its error shape): it queued nothing.
    Refused(Rejection),
    /// Any other answer without a prompt id (a proxy's 502 after ComfyUI queued it, a 200 without an id): the
    /// prompt may have been queued.
    Unclear(Rejection),
}

impl Posted {
    fn from_answer(status: http::StatusCode, answer: &Value) -> Self {
        if status.is_success()
            && let Some(prompt_id) = answer.get("prompt_id").and_then(Value::as_str)
        {
            return Self::Accepted {
                prompt_id: prompt_id.to_owned(),
            };
        }
        let rejection = Rejection {
            status: status.as_u16(),
            message: answer["error"]["message"]
                .as_str()
                .unwrap_or("ComfyUI did not accept the workflow")
                .to_owned(),
            details: json!({
                "comfy_status": status.as_u16(),
                "error": answer.get("error"),
                "node_errors": answer.get("node_errors"),
            }),
        };
        let comfy_refused = status == http::StatusCode::BAD_REQUEST
            && (answer.get("error").is_some() || answer.get("node_errors").is_some());
        if comfy_refused {
            Self::Refused(rejection)
        } else {
            Self::Unclear(rejection)
        }
    }
}

impl ComfyGateway {
    /// `POST /prompt`. An error is one where no answer came (not connected, a timeout, a cut connection).
    pub async fn post_prompt(&self, request: &PromptRequest<'_>) -> Result<Posted, ComfyError> {
        let mut extra_data = json!({ JOB_KEY: request.job_id });
        if let Some(key) = request.comfy_org_key {
            extra_data[super::credentials::KEYS[0]] = json!(key);
        }
        let body = json!({
            "prompt": request.workflow,
            "prompt_id": request.prompt_id,
            "client_id": request.client_id,
            "extra_data": extra_data,
        });
        let (status, answer) = self.post_json("/prompt", &body).await?;
        Ok(Posted::from_answer(status, &answer))
    }

    /// How many prompts ComfyUI has yet to run (`GET /prompt`).
    pub async fn queue_remaining(&self) -> Result<u64, ComfyError> {
        let info = self.get_json("/prompt", QUEUE_INFO_MAX_BYTES).await?;
        info["exec_info"]["queue_remaining"]
            .as_u64()
            .ok_or_else(|| ComfyError::BadResponse("GET /prompt: no queue_remaining".into()))
    }

    pub async fn queue(&self) -> Result<Queue, ComfyError> {
        let queue = self.get_json("/queue", LISTING_MAX_BYTES).await?;
        Ok(Queue::from_json(&queue))
    }

    pub async fn history(&self) -> Result<History, ComfyError> {
        match self.get_json("/history", LISTING_MAX_BYTES).await? {
            Value::Object(entries) => Ok(History(entries)),
            _ => Err(ComfyError::BadResponse(
                "GET /history: not an object".into(),
            )),
        }
    }

    /// A finished prompt's history entry (`outputs`, `status`); `None` while ComfyUI has none for it.
    pub async fn history_of(&self, prompt_id: &str) -> Result<Option<Value>, ComfyError> {
        // The path is normalised like any other (`upstream_uri`): an id with `/` or `..` cannot leave `/history`.
        let path = format!("/history/{prompt_id}");
        let mut history = self.get_json(&path, LISTING_MAX_BYTES).await?;
        Ok(history.get_mut(prompt_id).map(Value::take))
    }

    /// Takes a waiting prompt out of the queue (`POST /queue {"delete": [id]}`).
    pub async fn delete_queued(&self, prompt_id: &str) -> Result<(), ComfyError> {
        self.post_json("/queue", &json!({ "delete": [prompt_id] }))
            .await
            .map(drop)
    }

    /// Interrupts a prompt if it is the one running (`POST /interrupt {"prompt_id"}`).
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), ComfyError> {
        self.post_json("/interrupt", &json!({ "prompt_id": prompt_id }))
            .await
            .map(drop)
    }

    /// Streams an output ComfyUI lists in a history entry (`GET /view`) into `target`; answers its size and
    /// content type.
    pub async fn download_file(
        &self,
        filename: &str,
        subfolder: &str,
        kind: &str,
        target: &std::path::Path,
    ) -> Result<(u64, String), ComfyError> {
        let set = percent_encoding::NON_ALPHANUMERIC;
        let query = format!(
            "filename={}&subfolder={}&type={}",
            percent_encoding::utf8_percent_encode(filename, set),
            percent_encoding::utf8_percent_encode(subfolder, set),
            percent_encoding::utf8_percent_encode(kind, set)
        );
        self.download("/view", &query, target).await
    }

    pub async fn object_info(&self) -> Result<Value, ComfyError> {
        self.get_json("/object_info", OBJECT_INFO_MAX_BYTES).await
    }

    pub async fn embeddings(&self) -> Result<Value, ComfyError> {
        self.get_json("/embeddings", OBJECT_INFO_MAX_BYTES).await
    }

    pub async fn system_stats(&self) -> Result<Value, ComfyError> {
        self.get_json("/system_stats", SYSTEM_STATS_MAX_BYTES).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_reads_each_prompt_and_the_job_it_was_posted_for() {
        let queue = Queue::from_json(&json!({
            "queue_running": [[0, "a", {}, {"client_id": "c", "orchestrator_job": "job-1"}, ["9"]]],
            "queue_pending": [[1, "b", {}, {}, []], "not an item"],
        }));
        assert!(queue.is_running("a") && !queue.is_pending("a"));
        assert!(queue.is_pending("b") && queue.holds("b") && !queue.holds("c"));
        assert_eq!(queue.running[0].job_id.as_deref(), Some("job-1"));
        assert_eq!(queue.prompts().count(), 2);
    }

    #[test]
    fn only_comfyuis_own_400_is_a_refusal() {
        let refused = Posted::from_answer(
            http::StatusCode::BAD_REQUEST,
            &json!({"error": {"message": "Prompt outputs failed validation"}, "node_errors": {}}),
        );
        assert!(
            matches!(&refused, Posted::Refused(r) if r.message == "Prompt outputs failed validation")
        );
        let proxy = Posted::from_answer(http::StatusCode::BAD_GATEWAY, &json!("Bad Gateway"));
        assert!(matches!(proxy, Posted::Unclear(r) if r.status == 502));
        let no_id = Posted::from_answer(http::StatusCode::OK, &json!({"number": 1}));
        assert!(matches!(no_id, Posted::Unclear(_)));
        let accepted = Posted::from_answer(
            http::StatusCode::OK,
            &json!({"prompt_id": "p", "number": 1, "node_errors": {}}),
        );
        assert!(matches!(accepted, Posted::Accepted { prompt_id } if prompt_id == "p"));
    }
}
