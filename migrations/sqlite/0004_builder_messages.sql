-- The builder's conversation with v0: which v0 chat a message belongs to, and the links v0 answered with
-- (the chat on v0.app, the live demo), as a JSON array of {label, url}.
ALTER TABLE messages ADD COLUMN chat_id TEXT;
ALTER TABLE messages ADD COLUMN links TEXT NOT NULL DEFAULT '[]';
