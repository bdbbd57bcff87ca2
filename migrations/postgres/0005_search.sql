-- The gallery's search: each job's prompt text (a template's or FLUX's `prompt`, else the text inputs of its
-- workflow), written with the job, and a GIN index over its words (`search_*` objects are each engine's own;
-- SQLite has an FTS5 table instead).
ALTER TABLE jobs ADD COLUMN prompt_text TEXT;
UPDATE jobs SET prompt_text = CAST(params AS JSONB) ->> 'prompt';
CREATE INDEX search_jobs_prompt ON jobs USING GIN (to_tsvector('simple', COALESCE(prompt_text, '')));
-- The gallery lists jobs with outputs, newest first.
CREATE INDEX jobs_with_outputs ON jobs (created_at, id) WHERE outputs <> '[]';
