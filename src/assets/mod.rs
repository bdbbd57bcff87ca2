//! Assets of the Comfy API v2: records with ids of their own over blobs kept once each, named by the blake3 hash
//! of their bytes, in `DATA_DIR/assets/`. Bytes are hashed as they arrive and written to a temporary file in the
//! same folder, which becomes the blob by a rename: a blob is whole or absent, never half-written. A job's outputs
//! are assets too, without a record: `<job id>.<n>` names its n-th output, kept where the job keeps it.
//!
//! [`refs`]: the `core/ASSET` references inside a submitted workflow, checked when it is submitted and uploaded to
//! whichever ComfyUI the job is sent to, each time it is sent (a job moved on failover finds its inputs there too).

pub mod refs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::clock::now;
use crate::model::{Job, OutputFile};
use crate::store::{AssetRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("the bytes hash to {computed}, not to the expected {expected}")]
    HashMismatch { expected: String, computed: String },
    #[error("the upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload could not be read: {0}")]
    Body(String),
    #[error("the upload did not arrive within {} s", after.as_secs_f64())]
    BodyTimeout { after: std::time::Duration },
    #[error("cannot write the asset")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An asset as the API shows it: an uploaded one (a record over a blob), or a job's output.
#[derive(Debug, Clone)]
pub enum Found {
    Uploaded(AssetRecord),
    Output {
        job: Box<Job>,
        index: usize,
        file: OutputFile,
    },
}

/// Removes the temporary files of uploads a crash cut off. Only old ones: another instance of a fleet sharing the
/// folder may be receiving one now.
fn sweep_unfinished(dir: &std::path::Path) {
    const OLD: std::time::Duration = std::time::Duration::from_secs(3600);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let unfinished = entry
            .file_name()
            .to_string_lossy()
            .starts_with(".receiving-");
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > OLD));
        if unfinished && old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Bytes received and hashed, waiting in the asset folder to become a blob (removed if they never do).
pub struct Received {
    path: PathBuf,
    pub hash: String,
    pub size: u64,
}

impl Drop for Received {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a new record says about its bytes.
pub struct Placement {
    pub content_type: String,
    pub file_path: Option<String>,
    pub tags: Vec<String>,
}

#[derive(Clone)]
pub struct Assets {
    dir: PathBuf,
    outputs: PathBuf,
    store: Store,
    /// Held while a blob is placed and its record written, or a record removed and its blob with it, so a delete
    /// never takes a blob a concurrent upload of the same bytes is about to use.
    blobs: Arc<tokio::sync::Mutex<()>>,
}

/// A content type as a client gave it (a multipart part, a `data:` URL's head), read as a MIME type: its essence
/// (`type/subtype`, lower case, no parameters), or `None` when it is not one. What is stored and later written into
/// a header of the multipart part sent to ComfyUI is only ever this essence, so no CR, LF or other control
/// character given by a client can reach a header.
pub fn media_type(given: &str) -> Option<mime::Mime> {
    if given.chars().any(char::is_control) {
        return None;
    }
    let essence = given.split(';').next()?.trim();
    let (kind, subtype) = essence.split_once('/')?;
    // Each half an RFC 9110 token: what a header may carry, nothing that ends or splits one.
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(kind) || !token(subtype) {
        return None;
    }
    essence.to_ascii_lowercase().parse().ok()
}

/// The media type of a stored record or output, for a header: its essence, or `application/octet-stream` for a
/// value that is not one (records kept before content types were checked).
pub fn stored_media_type(stored: &str) -> mime::Mime {
    media_type(stored).unwrap_or(mime::APPLICATION_OCTET_STREAM)
}

/// `blake3:<64 lowercase hex>`, the only hash form accepted (a blob's file name is made from it).
pub fn valid_hash(hash: &str) -> bool {
    hash.strip_prefix("blake3:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

impl Assets {
    pub fn new(dir: PathBuf, outputs: PathBuf, store: Store) -> Self {
        sweep_unfinished(&dir);
        Self {
            dir,
            outputs,
            store,
            blobs: Arc::default(),
        }
    }

    fn blob_path(&self, hash: &str) -> Option<PathBuf> {
        valid_hash(hash).then(|| self.dir.join(&hash["blake3:".len()..]))
    }

    /// Reads `body` to a temporary file, hashing it on the way, refusing more than `limit` bytes.
    pub async fn receive<E: std::error::Error + 'static>(
        &self,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
        limit: u64,
    ) -> Result<Received, AssetError> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let mut received = Received {
            path: self
                .dir
                .join(format!(".receiving-{}", uuid::Uuid::new_v4().simple())),
            hash: String::new(),
            size: 0,
        };
        let mut file = tokio::fs::File::create(&received.path).await?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| match crate::comfy::body::timed_out(&e) {
                Some(after) => AssetError::BodyTimeout { after },
                None => AssetError::Body(e.to_string()),
            })?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(AssetError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        received.hash = format!("blake3:{}", hasher.finalize().to_hex());
        received.size = size;
        Ok(received)
    }

    /// Keeps bytes already in memory (an image a template's form sent as a data URL) as an asset: the record
    /// with these bytes under this path when there is one, a new one otherwise.
    pub async fn keep(
        &self,
        bytes: Bytes,
        placement: Placement,
    ) -> Result<AssetRecord, AssetError> {
        let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
        let received = self.receive(body, u64::MAX).await?;
        if let Some(path) = &placement.file_path
            && let Some(same) = self
                .store
                .asset_with_hash(&received.hash, Some(path))
                .await?
            && self.held(&same.hash).await?.is_some()
        {
            return Ok(same);
        }
        Ok(self.mint(received, placement).await?.0)
    }

    /// Makes a record over received bytes; answers it and whether the blob is new (`false`: the bytes were held
    /// already, and the record shares their blob).
    pub async fn mint(
        &self,
        received: Received,
        placement: Placement,
    ) -> Result<(AssetRecord, bool), AssetError> {
        let blob = self
            .blob_path(&received.hash)
            .expect("a computed hash is well-formed");
        let _placing = self.blobs.lock().await;
        let new_blob = !tokio::fs::try_exists(&blob).await?;
        if new_blob {
            tokio::fs::rename(&received.path, &blob).await?;
        }
        let record = AssetRecord {
            id: uuid::Uuid::new_v4().to_string(),
            hash: received.hash.clone(),
            size_bytes: i64::try_from(received.size).unwrap_or(i64::MAX),
            content_type: placement.content_type,
            file_path: placement.file_path,
            tags: placement.tags,
            created_at: now(),
        };
        self.store.insert_asset(&record).await?;
        Ok((record, new_blob))
    }

    /// A record over a blob already held (the dedup fast path): `(record, true)` newly made, `(record, false)` one
    /// with the same bytes and path that existed; `None` when no blob has this hash.
    pub async fn mint_from_hash(
        &self,
        hash: &str,
        file_path: Option<String>,
        tags: Vec<String>,
    ) -> Result<Option<(AssetRecord, bool)>, AssetError> {
        let _placing = self.blobs.lock().await;
        let Some(like) = self.held(hash).await? else {
            return Ok(None);
        };
        if let Some(path) = &file_path
            && let Some(same) = self.store.asset_with_hash(hash, Some(path)).await?
        {
            return Ok(Some((same, false)));
        }
        let record = AssetRecord {
            id: uuid::Uuid::new_v4().to_string(),
            file_path,
            tags,
            created_at: now(),
            ..like
        };
        self.store.insert_asset(&record).await?;
        Ok(Some((record, true)))
    }

    /// A record over the blob `hash`, when the blob is here.
    pub async fn held(&self, hash: &str) -> Result<Option<AssetRecord>, AssetError> {
        let Some(blob) = self.blob_path(hash) else {
            return Ok(None);
        };
        let record = self.store.asset_with_hash(hash, None).await?;
        Ok(match record {
            Some(record) if tokio::fs::try_exists(&blob).await? => Some(record),
            _ => None,
        })
    }

    /// An uploaded asset, or a job's output (`<job id>.<n>`).
    pub async fn find(&self, id: &str) -> Result<Option<Found>, AssetError> {
        if let Some((job_id, index)) = output_id(id) {
            let Some(job) = self.store.job(job_id).await? else {
                return Ok(None);
            };
            return Ok(job.outputs.get(index).cloned().map(|file| Found::Output {
                job: Box::new(job),
                index,
                file,
            }));
        }
        Ok(self.store.asset(id).await?.map(Found::Uploaded))
    }

    /// Where an asset's bytes are on disk (an output another instance of a fleet holds is not here: `None`).
    pub fn path_of(&self, found: &Found) -> Option<PathBuf> {
        match found {
            Found::Uploaded(record) => self.blob_path(&record.hash),
            Found::Output { job, file, .. } => {
                crate::fs_safe::resolve_within(&self.outputs, &format!("{}/{}", job.id, file.name))
            }
        }
    }

    /// Removes an uploaded asset's record, and its blob when no other record uses it; `false`: no such record.
    pub async fn delete(&self, id: &str) -> Result<bool, AssetError> {
        let _placing = self.blobs.lock().await;
        let Some((hash, left)) = self.store.delete_asset(id).await? else {
            return Ok(false);
        };
        if left == 0
            && let Some(blob) = self.blob_path(&hash)
        {
            remove_if_there(&blob).await?;
        }
        Ok(true)
    }
}

/// The id of a job's n-th output as an asset.
pub fn output_asset_id(job_id: &str, index: usize) -> String {
    format!("{job_id}.{index}")
}

fn output_id(id: &str) -> Option<(&str, usize)> {
    let (job, index) = id.rsplit_once('.')?;
    let index = index.parse().ok()?;
    uuid::Uuid::parse_str(job).ok()?;
    Some((job, index))
}

async fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_type_is_kept_as_its_essence_or_refused() {
        let essence = |t: &str| media_type(t).map(|m| m.essence_str().to_owned());
        assert_eq!(essence("image/png").as_deref(), Some("image/png"));
        assert_eq!(
            essence(" Image/PNG ; charset=x").as_deref(),
            Some("image/png")
        );
        for bad in [
            "image/png\r\nX-Injected: 1",
            "image/png\n",
            "png",
            "",
            "image/",
            "a b/c",
        ] {
            assert_eq!(essence(bad), None, "{bad:?}");
        }
        assert_eq!(
            stored_media_type("text/plain\r\nX: y"),
            mime::APPLICATION_OCTET_STREAM
        );
    }

    #[test]
    fn only_a_full_lowercase_blake3_hash_names_a_blob() {
        let hex = "a".repeat(64);
        assert!(valid_hash(&format!("blake3:{hex}")));
        assert!(!valid_hash(&format!("blake3:{}", "A".repeat(64))));
        assert!(!valid_hash(&format!("sha256:{hex}")));
        assert!(!valid_hash("blake3:../../etc/passwd"));
        assert!(!valid_hash(&format!("blake3:{}", &hex[1..])));
    }

    #[test]
    fn a_start_removes_old_unfinished_uploads_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, age_secs: u64| {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            let at = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
            file.set_modified(at).unwrap();
        };
        make(".receiving-crashed", 7200);
        make(".receiving-in-progress", 5);
        make(&"b".repeat(64), 7200);
        sweep_unfinished(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![".receiving-in-progress".to_owned(), "b".repeat(64)]
        );
    }

    #[test]
    fn an_output_id_is_a_job_id_and_an_index() {
        let job = uuid::Uuid::now_v7().to_string();
        let id = output_asset_id(&job, 3);
        assert_eq!(output_id(&id), Some((job.as_str(), 3)));
        assert_eq!(output_id(&uuid::Uuid::new_v4().to_string()), None);
        assert_eq!(output_id("x.1"), None);
    }
}
