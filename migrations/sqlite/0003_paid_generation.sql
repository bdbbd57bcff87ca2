-- Paid generation (FLUX): the provider's task id and where to poll it, recorded right after the submit, and
-- what the job costs.
ALTER TABLE jobs ADD COLUMN provider_id TEXT;
ALTER TABLE jobs ADD COLUMN polling_url TEXT;
ALTER TABLE jobs ADD COLUMN cost_micros INTEGER;

-- Every paid job's price, reserved against its UTC day before the call and kept across restarts: `reserved`
-- while the outcome is open, `spent` once the provider took the task, `released` when it certainly did not.
CREATE TABLE charges (
    job_id        TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    day           TEXT NOT NULL,
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
    state         TEXT NOT NULL CHECK (state IN ('reserved', 'spent', 'released')),
    updated_at    TEXT NOT NULL
);
CREATE INDEX charges_day ON charges (day, state);

-- Idempotency-Key (Stripe-style): the first request's fingerprint and, once it is known, its answer.
CREATE TABLE idempotency_keys (
    scope           TEXT NOT NULL,
    key             TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    job_id          TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    response_status INTEGER,
    response_body   TEXT,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Confirmation tokens are single-use: a token is recorded with the job it paid for, in the same transaction.
CREATE TABLE used_confirmations (
    token_id TEXT PRIMARY KEY NOT NULL,
    job_id   TEXT REFERENCES jobs (id) ON DELETE CASCADE,
    used_at  TEXT NOT NULL
);
