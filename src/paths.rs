//! Every filesystem location Orchestrator uses, derived from the configuration. No other module builds a path
//! from a literal.

use std::path::{Path, PathBuf};

/// Where Orchestrator keeps its own files.
#[derive(Debug, Clone)]
pub struct DataPaths {
    root: PathBuf,
}

impl DataPaths {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: data_dir.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Files a job produced, one folder per job.
    pub fn outputs(&self) -> PathBuf {
        self.root.join("outputs")
    }

    /// Uploaded assets (Comfy API v2): one file per distinct content, named by its blake3 hash.
    pub fn assets(&self) -> PathBuf {
        self.root.join("assets")
    }

    /// Orchestrator's own logs (ComfyUI's logs live where its service backend writes them).
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Creates the folders the server writes into, so a first run on a fresh machine needs no set-up.
    pub fn ensure(&self) -> std::io::Result<()> {
        for dir in [self.root.clone(), self.outputs(), self.logs()] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}
