-- The gallery's search: each job's prompt text (a template's or FLUX's `prompt`, else the text inputs of its
-- workflow), written with the job, and SQLite's full-text index over it (FTS5, an external-content table kept by
-- triggers; `search_*` objects are each engine's own, PostgreSQL has a GIN index instead).
ALTER TABLE jobs ADD COLUMN prompt_text TEXT;
UPDATE jobs SET prompt_text = json_extract(params, '$.prompt') WHERE json_valid(params);
CREATE VIRTUAL TABLE search_jobs USING fts5(prompt_text, content = 'jobs', content_rowid = 'rowid');
CREATE TRIGGER search_jobs_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO search_jobs (rowid, prompt_text) VALUES (new.rowid, new.prompt_text);
END;
CREATE TRIGGER search_jobs_delete AFTER DELETE ON jobs BEGIN
    INSERT INTO search_jobs (search_jobs, rowid, prompt_text) VALUES ('delete', old.rowid, old.prompt_text);
END;
INSERT INTO search_jobs (search_jobs) VALUES ('rebuild');
-- The gallery lists jobs with outputs, newest first.
CREATE INDEX jobs_with_outputs ON jobs (created_at, id) WHERE outputs <> '[]';
