-- The fleet: every Orchestrator on this store registers itself with a heartbeat, and each job it sends to ComfyUI
-- is claimed by it under a lease it renews while it follows the job. A lease that runs out lets another instance
-- take the job over. (On SQLite there is one instance; the same rows make its restarts and its views uniform.)
CREATE TABLE instances (
    id           TEXT PRIMARY KEY NOT NULL,
    url          TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    backends     TEXT NOT NULL DEFAULT '[]'
);

-- Secrets the fleet shares, made once by the first instance: the key of confirmation tokens and of the fleet's own
-- requests between instances.
CREATE TABLE fleet_secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE jobs ADD COLUMN lease_until TEXT;
-- The fleet's queue: jobs no instance has claimed, oldest first.
CREATE INDEX jobs_claimable ON jobs (created_at) WHERE status = 'queued' AND claimed_by IS NULL;
-- An instance's claims, renewed in one statement.
CREATE INDEX jobs_claimed_by ON jobs (claimed_by) WHERE finished_at IS NULL;
