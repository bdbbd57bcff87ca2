-- no-transaction
-- Paid ComfyUI nodes: a job can wait for a person's approval (`awaiting_confirmation`, with the dry run that
-- says which nodes cost what in `approval`), and a paid job records what it really cost (`actual_cost_micros`,
-- from the price the API nodes report while they run).
--
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt (SQLite's documented procedure:
-- https://sqlite.org/lang_altertable.html#otheralter). Foreign keys are off meanwhile, so dropping the old table
-- does not cascade into charges, events and messages; that pragma only works outside a transaction, hence
-- `no-transaction` and a transaction of our own.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE jobs_new (
    id                 TEXT PRIMARY KEY NOT NULL,
    backend            TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('queued', 'submitted', 'running', 'succeeded', 'failed',
                                                       'cancelled', 'backend_lost', 'needs_reconcile',
                                                       'awaiting_confirmation')),
    prompt             TEXT,
    params             TEXT NOT NULL DEFAULT '{}',
    result             TEXT,
    created_at         TEXT NOT NULL,
    started_at         TEXT,
    finished_at        TEXT,
    progress           REAL NOT NULL DEFAULT 0,
    logs               TEXT NOT NULL DEFAULT '',
    template           TEXT,
    current_node       TEXT,
    error              TEXT,
    outputs            TEXT NOT NULL DEFAULT '[]',
    comfy_prompt_id    TEXT,
    backend_url        TEXT,
    provider_id        TEXT,
    polling_url        TEXT,
    cost_micros        INTEGER,
    approval           TEXT,
    actual_cost_micros INTEGER
);
INSERT INTO jobs_new (id, backend, status, prompt, params, result, created_at, started_at, finished_at, progress,
                      logs, template, current_node, error, outputs, comfy_prompt_id, backend_url, provider_id,
                      polling_url, cost_micros)
    SELECT id, backend, status, prompt, params, result, created_at, started_at, finished_at, progress, logs,
           template, current_node, error, outputs, comfy_prompt_id, backend_url, provider_id, polling_url,
           cost_micros
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_created_at ON jobs (created_at);
CREATE INDEX jobs_created_at_id ON jobs (created_at DESC, id DESC);
COMMIT;
PRAGMA foreign_keys = ON;
