-- The output folders a deleted job left on another instance of a fleet: written in the delete's transaction when
-- the job's outputs are kept by an instance other than the one deleting it, read by that instance (the holder),
-- which removes the folder and then the row. An instance down at the time cleans up when it is back.
CREATE TABLE deleted_outputs (
    job_id     TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    deleted_at TEXT NOT NULL
);
CREATE INDEX deleted_outputs_holder ON deleted_outputs (holder);
