//! A job's files: deleting them with the job, and gallery thumbnails: an image output scaled to fit [`SIZE`]×[`SIZE`] with the `image` crate, encoded as JPEG
//! once and kept beside it (`DATA_DIR/outputs/<job id>/.thumbnails/<name>.jpg`, so it goes with the job's folder);
//! later requests read the file. Outputs that are not still images (video, audio) have none: the gallery shows
//! those with the browser's own player.

use std::path::{Path, PathBuf};

use super::Jobs;

/// The longest side of a thumbnail, in pixels.
pub const SIZE: u32 = 320;

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("the output cannot be read as an image: {0}")]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the thumbnail task ended without an answer")]
    Task(#[from] tokio::task::JoinError),
}

/// Whether an output of this type gets a thumbnail: still images the `image` crate decodes.
pub fn has_thumbnail(content_type: &str) -> bool {
    matches!(content_type, "image/png" | "image/jpeg" | "image/webp")
}

fn make(source: &Path, target: &Path) -> Result<(), ThumbnailError> {
    let picture = image::ImageReader::open(source)?
        .with_guessed_format()?
        .decode()?;
    let small = picture.thumbnail(SIZE, SIZE).to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 82).encode_image(&small)?;
    crate::fs_safe::write_atomic(target, &jpeg)?;
    Ok(())
}

impl Jobs {
    /// Deletes a job that has ended: its record ([`crate::store::Store::delete_job`]), then its folder of
    /// outputs and thumbnails on this instance's disk.
    pub async fn delete(
        &self,
        id: &str,
    ) -> Result<crate::store::Deleted, crate::store::StoreError> {
        use crate::store::Deleted;
        let deleted = self.store.delete_job(id).await?;
        if matches!(deleted, Deleted::Removed | Deleted::OutputsForgotten)
            && let Some(folder) = crate::fs_safe::resolve_within(&self.outputs, id)
            && let Err(error) = tokio::fs::remove_dir_all(&folder).await
        {
            tracing::warn!(job = %id, %error, "cannot remove a deleted job's files");
        }
        Ok(deleted)
    }

    /// The thumbnail of job `id`'s output `name`, made now if it was not yet; `None` when the output is not on this
    /// instance's disk.
    pub async fn thumbnail(&self, id: &str, name: &str) -> Result<Option<PathBuf>, ThumbnailError> {
        let Some(source) = self.output_file(id, name) else {
            return Ok(None);
        };
        let Some(folder) = crate::fs_safe::resolve_within(&self.outputs, id) else {
            return Ok(None);
        };
        let folder = folder.join(".thumbnails");
        let Some(target) = crate::fs_safe::new_file_in(&folder, &format!("{name}.jpg")) else {
            return Ok(None);
        };
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(Some(target));
        }
        tokio::fs::create_dir_all(&folder).await?;
        let made = target.clone();
        tokio::task::spawn_blocking(move || make(&source, &made)).await??;
        Ok(Some(target))
    }
}
