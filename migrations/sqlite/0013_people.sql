-- People: a studio's accounts. `role` orders what a person may do: viewer (sees the team's work) < generator (runs
-- free work, asks for paid work) < approver (confirms paid work, anyone's) < admin (settings, the service,
-- people). A name is unique whatever its case (`name_key`, the name lower-cased). `password_hash` is argon2id's
-- PHC string; `credentials_at` changes with the password, the role and disabling, so sessions and tokens made
-- before it stop opening anything.
CREATE TABLE people (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    name_key       TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL CHECK (role IN ('viewer', 'generator', 'approver', 'admin')),
    password_hash  TEXT,
    disabled_at    TEXT,
    created_at     TEXT NOT NULL,
    credentials_at TEXT NOT NULL
);
