//! A job's files: deleting them with the job, and gallery thumbnails: an image output scaled to fit [`SIZE`]×[`SIZE`]
//! with the `image` crate, encoded as JPEG once and kept beside it (`DATA_DIR/outputs/<job id>/.thumbnails/<name>.jpg`,
//! so it goes with the job's folder). Outputs that are not still images (video, audio) have none: the gallery shows
//! those with the browser's own player.
//!
//! Decoding is what costs: a 420 KB PNG of 12000×12000 pixels is 432 MB once decoded. So an image's dimensions are
//! read from its header first, one larger than [`MAX_DECODED_BYTES`] (or wider or taller than [`MAX_SIDE`]) is never
//! decoded and gets the placeholder, the decoder runs under the same limits ([`image::Limits`]), and one decode runs
//! at a time ([`Thumbnails::decodes`]), which also makes each thumbnail once: whoever gets the permit first makes
//! it, the others find it made. The follower makes a job's thumbnails right after downloading its outputs, before
//! the job is `succeeded`, so the gallery rarely has to.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::Jobs;
use crate::model::OutputFile;

/// The longest side of a thumbnail, in pixels.
pub const SIZE: u32 = 320;
/// The most memory one decode may take (an 8K RGBA picture is 133 MB).
pub const MAX_DECODED_BYTES: u64 = 192 * 1024 * 1024;
/// The widest or tallest image decoded.
pub const MAX_SIDE: u32 = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the thumbnail task ended without an answer")]
    Task(#[from] tokio::task::JoinError),
}

/// Whether an output of this type gets a thumbnail: still images the `image` crate decodes.
pub fn has_thumbnail(content_type: &str) -> bool {
    matches!(content_type, "image/png" | "image/jpeg" | "image/webp")
}

/// The thumbnails of this instance's outputs.
pub struct Thumbnails {
    outputs: PathBuf,
    /// One permit: one decode at a time, so memory is bounded by one [`MAX_DECODED_BYTES`] whatever the number
    /// of requests; a thumbnail is looked for again once the permit is held, so it is made once. The decode owns
    /// its permit: a request that goes away does not free it while the decode runs on.
    decodes: std::sync::Arc<tokio::sync::Semaphore>,
    /// Thumbnails made (or placeholders written) since start, counted by the decode itself.
    made: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Thumbnails {
    pub fn new(outputs: PathBuf) -> Self {
        Self {
            outputs,
            decodes: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            made: std::sync::Arc::default(),
        }
    }

    /// How many thumbnails (or placeholders) this instance has made since it started.
    pub fn made(&self) -> u64 {
        self.made.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The thumbnail of job `id`'s output `name`, made now if it was not yet (the placeholder when the output is
    /// too large to decode or not a picture the decoder reads); `None` when the output is not on this instance's
    /// disk.
    pub async fn of(&self, id: &str, name: &str) -> Result<Option<PathBuf>, ThumbnailError> {
        let Some(source) = crate::fs_safe::resolve_within(&self.outputs, &format!("{id}/{name}"))
        else {
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
        let permit = self
            .decodes
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(Some(target));
        }
        let (made, count) = (target.clone(), self.made.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            make(&source, &folder, &made)?;
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, ThumbnailError>(())
        })
        .await??;
        Ok(Some(target))
    }

    /// Makes the thumbnail of each of a job's image outputs (a failure is logged: a job never fails for its
    /// thumbnails).
    pub async fn make_all(&self, id: &str, outputs: &[OutputFile]) {
        for output in outputs.iter().filter(|o| has_thumbnail(&o.content_type)) {
            if let Err(error) = self.of(id, &output.name).await {
                tracing::warn!(job = %id, output = %output.name, %error, "cannot make a thumbnail");
            }
        }
    }
}

/// Why an image gets the placeholder rather than a thumbnail, or (`Open`) none at all.
#[derive(Debug, thiserror::Error)]
enum Unthumbnailable {
    #[error("{width}×{height} pixels is too large to decode")]
    TooLarge { width: u32, height: u32 },
    /// Whatever the decoder says, a truncated file's end included: the same bytes will never decode.
    #[error("not an image the decoder reads: {0}")]
    Image(#[from] image::ImageError),
    /// The file itself cannot be opened: maybe a passing condition, so nothing is written.
    #[error("cannot open the output: {0}")]
    Open(std::io::Error),
}

/// Writes `target`: the thumbnail of `source`, or the placeholder. The folder is made only inside the job's own,
/// so a job deleted meanwhile is not brought back.
fn make(source: &Path, folder: &Path, target: &Path) -> Result<(), ThumbnailError> {
    let jpeg = match scaled(source) {
        Ok(jpeg) => jpeg,
        Err(Unthumbnailable::Open(error)) => return Err(error.into()),
        Err(why) => {
            tracing::info!(source = %source.display(), %why, "the placeholder stands for a thumbnail");
            placeholder().to_vec()
        }
    };
    match std::fs::create_dir(folder) {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => return Err(error.into()),
        _ => {}
    }
    crate::fs_safe::write_atomic(target, &jpeg)?;
    Ok(())
}

/// The limits every decode runs under.
fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits
}

fn reader(
    source: &Path,
) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, Unthumbnailable> {
    let mut reader = image::ImageReader::open(source)
        .map_err(Unthumbnailable::Open)?
        .with_guessed_format()
        .map_err(Unthumbnailable::Open)?;
    reader.limits(limits());
    Ok(reader)
}

/// The JPEG of `source` scaled to fit [`SIZE`]×[`SIZE`]; its dimensions are read from its header first, by the
/// decoder that then decodes it (the file is opened and its header read once).
fn scaled(source: &Path) -> Result<Vec<u8>, Unthumbnailable> {
    use image::ImageDecoder;
    let decoder = reader(source)?.into_decoder()?;
    let (width, height) = decoder.dimensions();
    // Four bytes a pixel: the most an 8-bit PNG, JPEG or WebP decodes to; a 16-bit one is held to the limit by
    // the reservation below, as `ImageReader::decode` does it.
    let decoded = u64::from(width) * u64::from(height) * 4;
    if width > MAX_SIDE || height > MAX_SIDE || decoded > MAX_DECODED_BYTES {
        return Err(Unthumbnailable::TooLarge { width, height });
    }
    limits().reserve(decoder.total_bytes())?;
    let picture = image::DynamicImage::from_decoder(decoder)?;
    let small = picture.thumbnail(SIZE, SIZE).to_rgb8();
    drop(picture);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 82).encode_image(&small)?;
    Ok(jpeg)
}

/// The thumbnail of an image too large to decode, or one the decoder cannot read: a plain tile with a diagonal
/// hatch, made once.
pub fn placeholder() -> &'static [u8] {
    static JPEG: OnceLock<Vec<u8>> = OnceLock::new();
    JPEG.get_or_init(|| {
        let tile = image::RgbImage::from_fn(SIZE, SIZE, |x, y| {
            if (x + y) % 24 < 2 {
                image::Rgb([150, 156, 168])
            } else {
                image::Rgb([214, 218, 226])
            }
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 82)
            .encode_image(&tile)
            .expect("a JPEG of a small tile encodes");
        jpeg
    })
}

impl Jobs {
    /// Deletes a job that has ended: its record ([`crate::store::Store::delete_job`]), then its folder of
    /// outputs and thumbnails on this instance's disk. When another instance of the fleet keeps them, the store
    /// tells it ([`Jobs::remove_deleted_outputs`]).
    pub async fn delete(
        &self,
        id: &str,
    ) -> Result<crate::store::Deleted, crate::store::StoreError> {
        use crate::store::Deleted;
        let deleted = self.store().delete_job(id, &self.instance).await?;
        if matches!(deleted, Deleted::Removed | Deleted::OutputsForgotten) {
            self.remove_files(id).await;
        }
        Ok(deleted)
    }

    async fn remove_files(&self, id: &str) {
        if let Some(folder) = crate::fs_safe::resolve_within(&self.outputs, id)
            && let Err(error) = tokio::fs::remove_dir_all(&folder).await
        {
            tracing::warn!(job = %id, %error, "cannot remove a deleted job's files");
        }
    }

    /// Removes the files of jobs deleted through other instances of the fleet that this one keeps (the
    /// heartbeat calls it; an instance that was down catches up).
    pub(super) async fn remove_deleted_outputs(&self) {
        let ids = match self.store().deleted_outputs(&self.instance, 100).await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, "cannot read the jobs deleted elsewhere");
                return;
            }
        };
        for id in ids {
            self.remove_files(&id).await;
            if let Err(error) = self.store().forget_deleted_outputs(&id).await {
                tracing::warn!(job = %id, %error, "cannot forget a deleted job's files");
            }
        }
    }

    /// The thumbnails of this instance's outputs.
    pub fn thumbnails(&self) -> &Thumbnails {
        &self.thumbnails
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    }

    /// A PNG whose header says `width`×`height` (its pixels are a 4×4 picture's: the header is all that is read).
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = png(4, 4);
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = bytes[12..29].iter().fold(!0u32, |mut crc, byte| {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
            crc
        });
        bytes[29..33].copy_from_slice(&(!crc).to_be_bytes());
        bytes
    }

    #[tokio::test]
    async fn a_picture_too_large_to_decode_gets_the_placeholder_and_others_a_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        std::fs::create_dir(&job).unwrap();
        // 12000×12000 is 432 MB decoded, over the limit; a few kilobytes as a PNG.
        std::fs::write(job.join("huge.png"), png_claiming(12_000, 12_000)).unwrap();
        std::fs::write(job.join("tall.png"), png_claiming(100, 40_000)).unwrap();
        std::fs::write(job.join("small.png"), png(640, 480)).unwrap();
        std::fs::write(job.join("broken.png"), b"\x89PNG not really").unwrap();
        let whole = png(64, 64);
        std::fs::write(job.join("truncated.png"), &whole[..whole.len() / 2]).unwrap();
        let thumbnails = Thumbnails::new(dir.path().to_owned());
        for (name, placeholder_expected) in [
            ("huge.png", true),
            ("tall.png", true),
            ("broken.png", true),
            ("truncated.png", true),
            ("small.png", false),
        ] {
            let path = thumbnails.of("job", name).await.unwrap().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes == placeholder(), placeholder_expected, "{name}");
            let picture = image::load_from_memory(&bytes).unwrap();
            assert!(
                picture.width() <= SIZE && picture.height() <= SIZE,
                "{name}"
            );
        }
        assert!(thumbnails.of("job", "absent.png").await.unwrap().is_none());
        assert!(
            thumbnails
                .of("job", "../escape.png")
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Eight requests at once for one output, half of them given up while they wait: one decode, one file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_requests_for_one_thumbnail_make_it_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("job")).unwrap();
        std::fs::write(dir.path().join("job/a.png"), png(1600, 1200)).unwrap();
        let thumbnails = std::sync::Arc::new(Thumbnails::new(dir.path().to_owned()));
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let thumbnails = thumbnails.clone();
                tokio::spawn(async move { thumbnails.of("job", "a.png").await })
            })
            .collect();
        for (n, request) in requests.into_iter().enumerate() {
            if n % 2 == 1 {
                request.abort();
            } else {
                assert!(request.await.unwrap().unwrap().is_some());
            }
        }
        thumbnails.of("job", "a.png").await.unwrap().unwrap();
        assert_eq!(thumbnails.made(), 1, "made once");
    }

    #[tokio::test]
    async fn a_deleted_job_is_not_brought_back_by_its_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("gone.png");
        std::fs::write(&source, png(4, 4)).unwrap();
        let folder = dir.path().join("deleted-job/.thumbnails");
        assert!(make(&source, &folder, &folder.join("x.jpg")).is_err());
        assert!(!dir.path().join("deleted-job").exists());
    }
}
