//! What ComfyUI's messages about one prompt mean for its job, as plain code: no socket, no store. The follower
//! feeds it every message and carries out the [`Step`] it answers, so the rules are unit-tested on recorded
//! messages alone.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::codes::{Code, Failure};
use crate::model::EventKind;
use crate::model::JobStatus;
use crate::store::JobChange;

/// How a followed run ended.
#[derive(Debug, PartialEq)]
pub(super) enum End {
    /// `executing {node: null}` arrived: the run is over and its history written.
    Finished,
    Failed(Failure),
    Interrupted,
    /// The socket ended first.
    SocketLost,
    Stopped,
}

/// What to do after one message.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    Nothing,
    /// Record a change of the job, as an event of this kind (`state` or `progress`).
    Change(EventKind, JobChange),
    End(End),
}

/// One prompt's run as its messages tell it.
pub(super) struct Track {
    prompt_id: String,
    /// Node id → class, to name the current node.
    classes: HashMap<String, String>,
    /// Nodes that ran or came from the cache. ComfyUI sends `executed` only for output nodes: any other node is
    /// done when the next one starts.
    done: HashSet<String>,
    /// The node running now.
    current: Option<String>,
    last_progress: f64,
}

impl Track {
    pub(super) fn new(prompt_id: &str, workflow: &Value) -> Self {
        let classes = workflow
            .as_object()
            .into_iter()
            .flatten()
            .map(|(id, node)| {
                let class = node["class_type"].as_str().unwrap_or("");
                (id.clone(), class.to_owned())
            })
            .collect();
        Self {
            prompt_id: prompt_id.to_owned(),
            classes,
            done: HashSet::new(),
            current: None,
            last_progress: 0.0,
        }
    }

    /// Whether a message names this prompt (ComfyUI's status broadcasts name none).
    pub(super) fn concerns(&self, event: &Value) -> bool {
        event["data"]["prompt_id"] == self.prompt_id.as_str()
    }

    /// A JSON message of ComfyUI's.
    pub(super) fn on_event(&mut self, event: &Value) -> Step {
        let data = &event["data"];
        if data
            .get("prompt_id")
            .and_then(Value::as_str)
            .is_some_and(|id| id != self.prompt_id)
        {
            return Step::Nothing;
        }
        match event["type"].as_str().unwrap_or_default() {
            "execution_start" => Step::Change(
                EventKind::State,
                JobChange {
                    status: Some(JobStatus::Running),
                    started: true,
                    ..Default::default()
                },
            ),
            "execution_cached" => {
                let cached = data["nodes"].as_array().into_iter().flatten();
                self.done
                    .extend(cached.filter_map(Value::as_str).map(str::to_owned));
                Step::Nothing
            }
            "executing" => match data["node"].as_str() {
                None if self.concerns(event) => Step::End(End::Finished),
                None => Step::Nothing,
                Some(node) => {
                    if let Some(previous) = self.current.replace(node.to_owned()) {
                        self.done.insert(previous);
                    }
                    // Never backwards, whatever order the nodes report in.
                    let progress = self.progress(0.0).max(self.last_progress);
                    self.last_progress = progress;
                    let label = match self.classes.get(node) {
                        Some(class) if !class.is_empty() => format!("{node} {class}"),
                        _ => node.to_owned(),
                    };
                    Step::Change(
                        EventKind::Progress,
                        JobChange {
                            status: Some(JobStatus::Running),
                            started: true,
                            current_node: Some(Some(label)),
                            progress: Some(progress),
                            ..Default::default()
                        },
                    )
                }
            },
            "progress" => {
                let (value, max) = (
                    data["value"].as_f64().unwrap_or(0.0),
                    data["max"].as_f64().unwrap_or(1.0),
                );
                let progress = self.progress(if max > 0.0 { value / max } else { 0.0 });
                // Whole percents only: a 1,000-step sampler must not write a thousand rows.
                if progress.floor() <= self.last_progress.floor() {
                    return Step::Nothing;
                }
                self.last_progress = progress;
                Step::Change(
                    EventKind::Progress,
                    JobChange {
                        progress: Some(progress),
                        ..Default::default()
                    },
                )
            }
            "executed" => {
                if let Some(node) = data["node"].as_str() {
                    self.done.insert(node.to_owned());
                }
                Step::Nothing
            }
            "execution_error" => {
                let message = data["exception_message"]
                    .as_str()
                    .unwrap_or("ComfyUI failed while running the workflow")
                    .trim();
                Step::End(End::Failed(
                    Failure::new(Code::ComfyExecutionError, message).with_details(json!({
                        "node_id": data["node_id"], "node_type": data["node_type"],
                        "exception_type": data["exception_type"], "traceback": data["traceback"],
                    })),
                ))
            }
            "execution_interrupted" => Step::End(End::Interrupted),
            _ => Step::Nothing,
        }
    }

    /// Overall progress in percent: finished nodes plus the running node's share.
    fn progress(&self, running_fraction: f64) -> f64 {
        let total = self.classes.len().max(1) as f64;
        ((self.done.len() as f64 + running_fraction) / total * 100.0).clamp(0.0, 99.0)
    }
}
