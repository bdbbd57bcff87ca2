//! A finished run's outputs: read from `/history/{id}` (the one authoritative list) and downloaded through
//! `/view` into the job's folder before the job is `succeeded`.

use std::time::Duration;

use serde_json::Value;

use super::follow::Follower;
use crate::codes::{Code, Failure};
use crate::comfy::error::ComfyError;
use crate::jobs::ledger::finished;
use crate::model::EventKind;
use crate::model::{JobStatus, OutputFile};
use crate::store::JobChange;

impl Follower {
    /// Reads the run's outputs from the history and downloads every file; only then is the job `succeeded`.
    pub(super) async fn collect_outputs(&self) {
        let entry = match self.history_entry().await {
            Some(entry) => entry,
            None => {
                self.jobs
                    .lose(
                        &self.job_id,
                        Code::ComfyHistoryMissing,
                        "ComfyUI finished the run but has no history for it",
                    )
                    .await;
                return;
            }
        };
        if entry["status"]["status_str"] != "success" {
            let interrupted = entry["status"]["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m[0] == "execution_interrupted"));
            if interrupted {
                self.jobs
                    .ledger
                    .change(
                        &self.job_id,
                        EventKind::State,
                        finished(JobStatus::Cancelled),
                    )
                    .await;
            } else {
                let failure =
                    Failure::new(Code::ComfyExecutionError, "ComfyUI reports the run failed")
                        .with_details(entry["status"].clone());
                self.jobs.ledger.fail(&self.job_id, failure).await;
            }
            return;
        }
        match self.download_outputs(&entry).await {
            Ok(outputs) => {
                // Made here, once, so the gallery finds them made and never decodes on a request.
                self.jobs.thumbnails.make_all(&self.job_id, &outputs).await;
                let change = JobChange {
                    outputs: Some(outputs),
                    progress: Some(100.0),
                    ..finished(JobStatus::Succeeded)
                };
                self.jobs
                    .ledger
                    .change(&self.job_id, EventKind::State, change)
                    .await;
            }
            Err(error) => {
                let failure = Failure::new(Code::OutputFetchFailed, error.to_string());
                self.jobs.ledger.fail(&self.job_id, failure).await;
            }
        }
    }

    pub(super) async fn history_entry(&self) -> Option<Value> {
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let Some(entry) = self.gateway.history_of(&self.prompt_id).await.ok()? {
                return Some(entry);
            }
        }
        None
    }

    async fn download_outputs(&self, entry: &Value) -> Result<Vec<OutputFile>, ComfyError> {
        let dir = self.jobs.output_dir(&self.job_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(ComfyError::internal)?;
        let mut outputs = Vec::new();
        // Each file ComfyUI lists once, by where it is (a node may list the same file under two keys).
        let mut fetched: Vec<(&str, &str, &str)> = Vec::new();
        for (node_id, node_output) in entry["outputs"].as_object().into_iter().flatten() {
            // Images, animations and videos are all listed under `images`; some nodes use `gifs` or `videos`.
            for key in ["images", "gifs", "videos"] {
                for file in node_output[key].as_array().into_iter().flatten() {
                    let Some(filename) = file["filename"].as_str() else {
                        continue;
                    };
                    let subfolder = file["subfolder"].as_str().unwrap_or("");
                    let kind = file["type"].as_str().unwrap_or("output");
                    if fetched.contains(&(filename, subfolder, kind)) {
                        continue;
                    }
                    fetched.push((filename, subfolder, kind));
                    let taken = |name: &str| outputs.iter().any(|o: &OutputFile| o.name == name);
                    let Some(name) = output_name(filename, subfolder, taken) else {
                        continue;
                    };
                    let Some(target) = crate::fs_safe::new_file_in(&dir, &name) else {
                        continue;
                    };
                    let (size, content_type) = self
                        .gateway
                        .download_file(filename, subfolder, kind, &target)
                        .await?;
                    outputs.push(OutputFile {
                        url: format!(
                            "/api/jobs/{}/outputs/{}",
                            self.job_id,
                            percent_encoding::utf8_percent_encode(
                                &name,
                                percent_encoding::NON_ALPHANUMERIC
                            )
                        ),
                        name,
                        content_type,
                        size,
                        node_id: Some(node_id.clone()),
                    });
                }
            }
        }
        Ok(outputs)
    }
}

/// The last path component of a ComfyUI file name, without anything that could climb out of a folder.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    match cleaned.as_str() {
        "." | ".." => String::new(),
        _ => cleaned,
    }
}

/// The name an output is kept under: ComfyUI's own file name, or, when another output of the job already has it
/// (the same name in another subfolder: two SaveImage nodes with prefixes `a/x` and `b/x`), the subfolder joined in
/// front (`b-x_00001_.png`), then a number. `None` when nothing of the name is left to keep.
pub(super) fn output_name(
    filename: &str,
    subfolder: &str,
    taken: impl Fn(&str) -> bool,
) -> Option<String> {
    let name = safe_file_name(filename);
    if name.is_empty() {
        return None;
    }
    if !taken(&name) {
        return Some(name);
    }
    let folders: Vec<String> = subfolder
        .split(['/', '\\'])
        .map(safe_file_name)
        .filter(|part| !part.is_empty())
        .collect();
    let mut candidate = if folders.is_empty() {
        name.clone()
    } else {
        format!("{}-{name}", folders.join("-"))
    };
    let (stem, extension) = match candidate.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => (stem.to_owned(), format!(".{extension}")),
        _ => (candidate.clone(), String::new()),
    };
    let mut number = 2;
    while taken(&candidate) {
        candidate = format!("{stem}-{number}{extension}");
        number += 1;
    }
    Some(candidate)
}
