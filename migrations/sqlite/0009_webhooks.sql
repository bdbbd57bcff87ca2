-- Webhooks: one row per delivery owed to JOB_WEBHOOK_URL (a job that ended), written in the transaction of the
-- job's final change and deleted once the receiver took it, so neither a receiver that is down nor a crash or a
-- restart loses one. The body is made from the job's final row when it is sent. `next_at` is when it is tried
-- next (a sender's claim moves it a minute on); NULL once it was given up.
CREATE TABLE webhook_outbox (
    id         TEXT PRIMARY KEY NOT NULL,
    job_id     TEXT NOT NULL UNIQUE,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at) WHERE next_at IS NOT NULL;
