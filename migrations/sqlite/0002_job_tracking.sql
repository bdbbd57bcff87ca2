-- What following a job over ComfyUI's WebSocket records, each in its own column so the job list and the
-- reconciliation on start-up can query it.
ALTER TABLE jobs ADD COLUMN template TEXT;
ALTER TABLE jobs ADD COLUMN current_node TEXT;
ALTER TABLE jobs ADD COLUMN error TEXT;
ALTER TABLE jobs ADD COLUMN outputs TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN comfy_prompt_id TEXT;
ALTER TABLE jobs ADD COLUMN backend_url TEXT;
-- Keyset pagination walks (created_at, id) newest first.
CREATE INDEX jobs_created_at_id ON jobs (created_at DESC, id DESC);
