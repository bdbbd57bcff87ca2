-- Jobs are Orchestrator's own record of every generation, whatever the backend; ComfyUI forgets its queue on
-- restart, this table does not.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY NOT NULL,
    backend     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'submitted', 'running', 'succeeded', 'failed',
                                                'cancelled', 'backend_lost', 'needs_reconcile')),
    prompt      TEXT,
    params      TEXT NOT NULL DEFAULT '{}',
    result      TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    progress    REAL NOT NULL DEFAULT 0,
    logs        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_created_at ON jobs (created_at);

-- The builder's conversation with v0; a message may belong to a job.
CREATE TABLE messages (
    id        TEXT PRIMARY KEY NOT NULL,
    role      TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content   TEXT NOT NULL,
    job_id    TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    timestamp TEXT NOT NULL
);
CREATE INDEX messages_timestamp ON messages (timestamp);
