-- Comfy API v2 assets: records, each with an id of its own, over content-addressed blobs kept in DATA_DIR/assets/
-- under their blake3 hash. Several records may share one blob (an upload of bytes already held, `from-hash`); the
-- blob goes with the last record over it.
CREATE TABLE assets (
    id           TEXT PRIMARY KEY NOT NULL,
    hash         TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    file_path    TEXT,
    tags         TEXT NOT NULL DEFAULT '[]',
    created_at   TEXT NOT NULL
);
CREATE INDEX assets_hash ON assets (hash);
