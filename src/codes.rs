//! Every code a client can see, in one enum: the `code` of an API error body and of a job's `error`.
//!
//! A code is added here or nowhere, so none reaches a client undocumented: `docs/ERRORS.md` is made from this table
//! and a test fails when the two differ. Codes are part of the API; never rename one once shipped.

use serde::Serialize;

macro_rules! codes {
    ($( $(#[$attr:meta])* $variant:ident = $code:literal, $where:literal, $meaning:literal; )*) => {
        /// A stable, snake_case code clients branch on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$attr])* $variant, )*
        }

        impl Code {
            /// Every code, in the order of the table.
            pub const ALL: &[Code] = &[$(Code::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)* }
            }

            /// Where a client meets it: `api` (an error answer), `job` (a job's `error`) or `both`.
            pub fn seen_in(self) -> &'static str {
                match self { $(Self::$variant => $where,)* }
            }

            /// What it means, for the error table.
            pub fn meaning(self) -> &'static str {
                match self { $(Self::$variant => $meaning,)* }
            }
        }
    };
}

codes! {
    // The guard.
    HostNotAllowed = "host_not_allowed", "api", "The `Host` header is not in `ORCH_ALLOWED_HOSTS` (DNS-rebinding guard).";
    CrossOriginRefused = "cross_origin_refused", "api", "A request came from another site's page (CSRF guard): a state-changing one anywhere, any request to `/api/v0/*` or relayed to ComfyUI (`/api/comfy/*`, the editor's origin; a top-level navigation to `/view` excepted).";
    Unauthorized = "unauthorized", "api", "A token is set (it must be when bound beyond loopback) and the request has no valid `Authorization: Bearer` token.";
    EditorOriginOnly = "editor_origin_only", "api", "A ComfyUI page or script was asked for on the panel's origin; `details.editor` is where the editor is.";
    RateLimited = "rate_limited", "api", "Too many paid requests (or paid prompts parked from ComfyUI's editor) from this client; `Retry-After` and `details.retry_after_secs` say when to retry.";
    // The request itself.
    UnsupportedMediaType = "unsupported_media_type", "api", "The route takes JSON and the body is not.";
    PayloadTooLarge = "payload_too_large", "api", "The body is over the limit in `details.limit_bytes`.";
    InvalidBody = "invalid_body", "api", "The body could not be read (broken framing, or the client went away).";
    BodyTimeout = "body_timeout", "api", "The body came too slowly: silent longer than `ORCH_BODY_IDLE_SECS`, or longer in all than `ORCH_BODY_TIMEOUT_SECS` (`details.after_secs`). The connection is closed.";
    InvalidPath = "invalid_path", "api", "The path would leave the upstream's API (`..`, encoded separators).";
    NotFound = "not_found", "api", "No such route.";
    MethodNotAllowed = "method_not_allowed", "api", "The route does not take this method.";
    InvalidPrompt = "invalid_prompt", "api", "The ComfyUI gateway refused a prompt before ComfyUI saw it (an unknown node class, not a workflow), in ComfyUI's own shape (`error.type`, `node_errors`).";
    ValidationFailed = "validation_failed", "api", "A field is wrong; `details.fields` names each with its problem.";
    IdempotencyKeyReused = "idempotency_key_reused", "api", "This `Idempotency-Key` came before with another body.";
    // ComfyUI.
    ComfyUnreachable = "comfy_unreachable", "both", "ComfyUI does not accept connections.";
    ComfyTimeout = "comfy_timeout", "both", "ComfyUI did not answer in time.";
    ComfyOffline = "comfy_offline", "both", "No ComfyUI is online to do this.";
    ComfyBadResponse = "comfy_bad_response", "both", "ComfyUI answered with something it should not have.";
    ComfyRejected = "comfy_rejected", "both", "ComfyUI refused the workflow; `details` carry its node errors.";
    ComfyOutcomeUnknown = "comfy_outcome_unknown", "job", "The prompt was sent and no answer came back: ComfyUI may or may not run it.";
    ComfyExecutionError = "comfy_execution_error", "job", "ComfyUI reported that the run failed; `details` carry its error.";
    ComfyHistoryMissing = "comfy_history_missing", "job", "ComfyUI finished the prompt but has no history of it (restarted, or its history was cleared).";
    OutputFetchFailed = "output_fetch_failed", "job", "The run succeeded but its outputs could not be downloaded and saved.";
    SubmitInterrupted = "submit_interrupted", "job", "Orchestrator stopped while it was sending the job; it was not resent, to be sure nothing runs (or is paid) twice.";
    BackendLost = "backend_lost", "job", "The backend no longer knows the job (it restarted or was lost); `exit` says how a supervised ComfyUI ended.";
    // Jobs.
    JobNotFound = "job_not_found", "api", "No job with this id.";
    JobFinished = "job_finished", "api", "The job has already ended.";
    JobNotCancellable = "job_not_cancellable", "api", "This job cannot be cancelled on its backend any more.";
    JobRunning = "job_running", "api", "The job has not ended yet: cancel it first, then delete it.";
    OutputNotFound = "output_not_found", "api", "The job has no output of this name.";
    NotAwaitingConfirmation = "not_awaiting_confirmation", "api", "A confirmation was sent for a job that does not wait for one.";
    // Money.
    GenerationDisabled = "generation_disabled", "both", "A paid request, and `ALLOW_GENERATION` is not `true`: nothing was sent.";
    ConfirmationRequired = "confirmation_required", "both", "A paid request needs the `confirmToken` of a dry run of this exact request; `details` hold the dry run and a token.";
    ConfirmationExpired = "confirmation_expired", "both", "The confirmation token is too old; `details` hold a new one.";
    ConfirmationMismatch = "confirmation_mismatch", "both", "The confirmation token is for another request or price.";
    ConfirmationUsed = "confirmation_used", "both", "The confirmation token already paid for a request.";
    BudgetExceeded = "budget_exceeded", "both", "The day's budget cannot cover the price; `details` give price, limit, spent and left.";
    SpendCapReached = "spend_cap_reached", "both", "A call of ComfyUI's paid API nodes would take its job past the amount confirmed for it (`maxUsd`, else the estimate): refused at the Comfy.org egress, the run interrupted, the job failed; `details` give `spent_usd` and `cap_usd`.";
    EgressKeyInvalid = "egress_key_invalid", "api", "A call to the Comfy.org egress (`/api/comfy-org/*`) without a job's key, with one nobody issued, or with the key of a job that has ended: nothing was forwarded.";
    // What is not set up.
    FluxNotConfigured = "flux_not_configured", "api", "`BFL_API_KEY` is not set.";
    ComfyOrgNotConfigured = "comfy_org_not_configured", "both", "A workflow with paid ComfyUI nodes, and `COMFY_ORG_API_KEY` is not set.";
    V0NotConfigured = "v0_not_configured", "api", "`V0_API_KEY` is not set.";
    ComfyDirNotConfigured = "comfy_dir_not_configured", "api", "`COMFY_DIR` is not set, so ComfyUI's files cannot be managed.";
    // BFL.
    BflUnreachable = "bfl_unreachable", "both", "BFL could not be reached; nothing was charged.";
    BflOutcomeUnknown = "bfl_outcome_unknown", "both", "The request reached BFL and no answer came back: it may have been charged. Not resent.";
    BflInsufficientCredits = "bfl_insufficient_credits", "both", "BFL refused: no credits left on the account.";
    BflRateLimited = "bfl_rate_limited", "both", "BFL refused: too many active tasks.";
    BflUnauthorized = "bfl_unauthorized", "both", "BFL refused the key.";
    BflRejected = "bfl_rejected", "both", "BFL rejected the request.";
    BflTimeout = "bfl_timeout", "job", "BFL did not finish the task within `FLUX_POLL_TIMEOUT_SECS`.";
    BflModerated = "bfl_moderated", "job", "BFL's moderation refused the request or the image.";
    BflFailed = "bfl_failed", "job", "BFL reported an error for the task.";
    BflTaskNotFound = "bfl_task_not_found", "job", "BFL no longer knows the task (an unknown or expired id).";
    BflDownloadFailed = "bfl_download_failed", "job", "The image was made but could not be downloaded and saved.";
    // v0.
    V0Timeout = "v0_timeout", "api", "v0 did not answer within `V0_TIMEOUT_SECS`.";
    V0Unreachable = "v0_unreachable", "api", "v0 could not be reached.";
    V0Error = "v0_error", "api", "v0 answered with an error; `details` carry it.";
    // The Comfy.org egress.
    ComfyOrgUnreachable = "comfy_org_unreachable", "api", "The Comfy.org API (`COMFY_ORG_API_BASE`) could not be reached; the call was not charged.";
    ComfyOrgTimeout = "comfy_org_timeout", "api", "The Comfy.org API did not answer in time; the call counts at its estimate (it may have been charged).";
    // Files and the service.
    LogNotFound = "log_not_found", "api", "ComfyUI's log file does not exist (yet).";
    ModelPathsUnparsable = "model_paths_unparsable", "api", "`extra_model_paths.yaml` cannot be read as ComfyUI reads it, so it was not changed; `details.problems` say why.";
    PathsWriteFailed = "paths_write_failed", "api", "`extra_model_paths.yaml` could not be written; the old file is intact.";
    ServiceExternal = "service_external", "api", "ComfyUI is run by something else (`SERVICE_BACKEND=external`), so Orchestrator does not control it.";
    ServiceNotInstalled = "service_not_installed", "api", "The service is not installed yet.";
    ServiceNotConfigured = "service_not_configured", "api", "No way to start ComfyUI is configured: set `COMFY_DIR` (or `COMFY_COMMAND`).";
    ServiceCommandFailed = "service_command_failed", "api", "The service manager (systemctl, sc, nssm) failed; `message` has its output.";
    ServiceWriteFailed = "service_write_failed", "api", "The service definition could not be written.";
    ServiceStartFailed = "service_start_failed", "api", "The supervised ComfyUI could not be started.";
    // The Comfy API v2 (`/api/v2`), with the codes its contract names.
    InvalidRequest = "invalid_request", "api", "A v2 request is malformed: a parameter, a header or a multipart part is wrong or missing.";
    InvalidWorkflow = "invalid_workflow", "api", "A v2 submission is not a workflow ComfyUI can run; `details.node_errors` has ComfyUI's per-node errors.";
    WorkflowFormatUi = "workflow_format_ui", "api", "A v2 submission is the editor's export (`nodes`/`links`), not the API format.";
    MissingAsset = "missing_asset", "both", "The workflow names a `core/ASSET` that is not here; `details.missing_ids` lists them.";
    HashMismatch = "hash_mismatch", "api", "An upload's `expected_hash` is not the blake3 hash of its bytes; nothing was kept.";
    BlobNotFound = "blob_not_found", "api", "No bytes with this hash are held.";
    MetadataInvalid = "metadata_invalid", "api", "A v2 job's `metadata` breaks a rule: at most 16 labels, keys of 1 to 40 of `A-Z a-z 0-9 _ - .`, string values of at most 256 bytes without control characters.";
    InvalidCursor = "invalid_cursor", "api", "A v2 list `cursor` that was not issued here.";
    InvalidMetadataFilter = "invalid_metadata_filter", "api", "More than 3 v2 list filters, or one not written `metadata[<key>]=<value>`.";
    IdempotencyKeyReuse = "idempotency_key_reuse", "api", "A v2 `Idempotency-Key` came before with another body.";
    IdempotencyConflict = "idempotency_conflict", "api", "A request under this `Idempotency-Key` is still being answered; retry after `Retry-After`.";
    InsufficientCredits = "insufficient_credits", "api", "A v2 submission of a paid workflow whose price the day's budget cannot cover; `details` give price, limit, spent and left.";
    Forbidden = "forbidden", "api", "A v2 request for something that cannot be done to this object (a job's output is removed with its job).";
    // Clients.
    OrchestratorUnreachable = "orchestrator_unreachable", "client", "The CLI or MCP server could not reach Orchestrator's API.";
    Internal = "internal", "both", "A fault inside Orchestrator; the log has the cause, the answer never does.";
}

impl Code {
    /// The error table of `docs/ERRORS.md`.
    pub fn table() -> String {
        let mut out = String::from(
            "# Error codes\n\nEvery `code` a client can see: in an error answer's `error.code` (`api`), in a job's \
             `error.code` (`job`), or both. Made from `src/codes.rs` (a test checks this file against it); codes \
             never change once shipped.\n\n| code | seen in | meaning |\n|---|---|---|\n",
        );
        for code in Self::ALL {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                code.as_str(),
                code.seen_in(),
                code.meaning()
            ));
        }
        out
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job ended badly, as its `error` holds it: a [`Code`], a message, and specifics when there are any.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    pub fn into_json(self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_table_in_docs_is_made_from_the_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ERRORS.md");
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, Code::table()).unwrap();
        }
        let written = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            written == Code::table(),
            "docs/ERRORS.md differs from src/codes.rs; run `UPDATE_DOCS=1 cargo test codes` and commit it"
        );
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{text}"
            );
            assert!(["api", "job", "both", "client"].contains(&code.seen_in()));
        }
    }

    #[test]
    fn a_failure_is_the_job_error_shape() {
        let plain = Failure::new(Code::BackendLost, "gone").into_json();
        assert_eq!(
            plain,
            serde_json::json!({ "code": "backend_lost", "message": "gone" })
        );
        let detailed = Failure::new(Code::ComfyRejected, "no")
            .with_details(serde_json::json!({ "node_errors": {} }))
            .into_json();
        assert_eq!(detailed["details"]["node_errors"], serde_json::json!({}));
    }
}
