-- The Comfy.org egress: every call ComfyUI's API nodes make goes through Orchestrator, with a key that names one
-- job (`egress_key_hash`, the BLAKE3 of that key; the key itself is never stored) instead of the server's.
-- The most a job may spend is its confirmed amount (`cost_micros`: the person's `maxUsd`, else the estimate); each
-- call is priced before it is forwarded and recorded in `egress_calls`, and the job's `actual_cost_micros` is their
-- sum.
ALTER TABLE jobs ADD COLUMN egress_key_hash TEXT;
CREATE UNIQUE INDEX jobs_egress_hash ON jobs (egress_key_hash) WHERE egress_key_hash IS NOT NULL;

-- One priced call: `open` while Comfy.org's answer is awaited (held at its estimate), `charged` once answered
-- (at the cost Comfy.org reported, `source` = `reported`, or at the estimate), `refunded` when Comfy.org refused it.
CREATE TABLE egress_calls (
    id             TEXT PRIMARY KEY NOT NULL,
    job_id         TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    route          TEXT NOT NULL,
    estimate_micros BIGINT NOT NULL CHECK (estimate_micros >= 0),
    cost_micros    BIGINT NOT NULL CHECK (cost_micros >= 0),
    source         TEXT NOT NULL CHECK (source IN ('estimate', 'reported')),
    state          TEXT NOT NULL CHECK (state IN ('open', 'charged', 'refunded')),
    created_at     TEXT NOT NULL
);
CREATE INDEX egress_calls_job ON egress_calls (job_id);
