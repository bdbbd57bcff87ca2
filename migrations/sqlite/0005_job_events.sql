-- Every change to a job, numbered, so a client that reconnects gets exactly what it missed (SSE Last-Event-ID):
-- `seq` numbers all events (GET /api/events), `job_seq` a job's own (GET /api/jobs/{id}/events).
CREATE TABLE job_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    job_seq  INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    job      TEXT NOT NULL,
    at       TEXT NOT NULL,
    UNIQUE (job_id, job_seq)
);
