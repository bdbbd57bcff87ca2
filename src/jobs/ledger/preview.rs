//! Live previews: the latest preview frame ComfyUI sent for each running job (with `--preview-method`), kept in
//! memory only, one per job, dropped when the job ends. Followers hear of a new one through a `preview` event, at
//! most every [`PREVIEW_EVERY`] per job (ComfyUI sends one per sampler step); the image itself is read from
//! `GET /api/jobs/{id}/preview`, never carried in the event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// At most this often a `preview` event per job.
pub const PREVIEW_EVERY: Duration = Duration::from_millis(500);

/// A job's latest preview image.
#[derive(Clone, Debug)]
pub struct Preview {
    pub bytes: Bytes,
    pub content_type: &'static str,
    /// How many frames the job has sent so far (this one included).
    pub number: u64,
}

/// The image in a binary frame of ComfyUI's WebSocket, when it is a preview (server.py `BinaryEventTypes`):
/// event 1 (PREVIEW_IMAGE) is a 4-byte image type (1 JPEG, 2 PNG) then the image; event 4
/// (PREVIEW_IMAGE_WITH_METADATA) a 4-byte length, that much JSON (with `image_type`), then the image. Every number
/// is big-endian. Anything else (event 3, progress text) is not a preview.
pub fn parse(frame: &[u8]) -> Option<(&'static str, &[u8])> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
    };
    let (content_type, image) = match word(0)? {
        1 => {
            let content_type = match word(4)? {
                1 => "image/jpeg",
                2 => "image/png",
                _ => return None,
            };
            (content_type, frame.get(8..)?)
        }
        4 => {
            let length = usize::try_from(word(4)?).ok()?;
            let end = 8usize.checked_add(length)?;
            let metadata: serde_json::Value = serde_json::from_slice(frame.get(8..end)?).ok()?;
            let content_type = match metadata["image_type"].as_str()? {
                "image/jpeg" | "jpeg" => "image/jpeg",
                "image/png" | "png" => "image/png",
                "image/webp" | "webp" => "image/webp",
                _ => return None,
            };
            (content_type, frame.get(end..)?)
        }
        _ => return None,
    };
    (!image.is_empty()).then_some((content_type, image))
}

#[derive(Default)]
pub struct Previews {
    by_job: Mutex<HashMap<String, Kept>>,
}

struct Kept {
    preview: Preview,
    announced: Option<Instant>,
}

impl Previews {
    /// Keeps `frame` as `job`'s latest preview when it is one; answers whether followers are to be told now.
    pub fn keep(&self, job: &str, frame: &[u8], now: Instant) -> bool {
        let Some((content_type, image)) = parse(frame) else {
            return false;
        };
        let mut by_job = self.by_job.lock().unwrap_or_else(|p| p.into_inner());
        let kept = by_job.entry(job.to_owned()).or_insert_with(|| Kept {
            preview: Preview {
                bytes: Bytes::new(),
                content_type,
                number: 0,
            },
            announced: None,
        });
        kept.preview = Preview {
            bytes: Bytes::copy_from_slice(image),
            content_type,
            number: kept.preview.number + 1,
        };
        let due = kept
            .announced
            .is_none_or(|at| now.duration_since(at) >= PREVIEW_EVERY);
        if due {
            kept.announced = Some(now);
        }
        due
    }

    pub fn get(&self, job: &str) -> Option<Preview> {
        let by_job = self.by_job.lock().unwrap_or_else(|p| p.into_inner());
        by_job.get(job).map(|kept| kept.preview.clone())
    }

    pub fn forget(&self, job: &str) {
        let mut by_job = self.by_job.lock().unwrap_or_else(|p| p.into_inner());
        by_job.remove(job);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_job.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview_frame(image_type: u32, image: &[u8]) -> Vec<u8> {
        let mut frame = 1u32.to_be_bytes().to_vec();
        frame.extend(image_type.to_be_bytes());
        frame.extend(image);
        frame
    }

    #[test]
    fn both_preview_events_are_read_and_nothing_else_is() {
        assert_eq!(
            parse(&preview_frame(1, b"\xff\xd8jpeg")),
            Some(("image/jpeg", &b"\xff\xd8jpeg"[..]))
        );
        assert_eq!(
            parse(&preview_frame(2, b"png")),
            Some(("image/png", &b"png"[..]))
        );
        let metadata = br#"{"node_id":"3","prompt_id":"p","image_type":"image/jpeg"}"#;
        let mut with_metadata = 4u32.to_be_bytes().to_vec();
        with_metadata.extend((metadata.len() as u32).to_be_bytes());
        with_metadata.extend(metadata);
        with_metadata.extend(b"img");
        assert_eq!(parse(&with_metadata), Some(("image/jpeg", &b"img"[..])));
        // Progress text (event 3), an unknown image type, a cut-off frame, an empty image, a lying length.
        let mut text = 3u32.to_be_bytes().to_vec();
        text.extend(b"\x00\x00\x00\x013Price: $0.1");
        assert_eq!(parse(&text), None);
        assert_eq!(parse(&preview_frame(9, b"x")), None);
        assert_eq!(parse(&[0, 0, 0, 1, 0]), None);
        assert_eq!(parse(&preview_frame(1, b"")), None);
        let mut lying = 4u32.to_be_bytes().to_vec();
        lying.extend(u32::MAX.to_be_bytes());
        assert_eq!(parse(&lying), None);
    }

    #[test]
    fn one_preview_per_job_the_latest_announced_at_most_twice_a_second() {
        let previews = Previews::default();
        let start = Instant::now();
        assert!(previews.keep("a", &preview_frame(1, b"one"), start));
        // Sooner than PREVIEW_EVERY: kept, not announced.
        assert!(!previews.keep(
            "a",
            &preview_frame(1, b"two"),
            start + Duration::from_millis(100)
        ));
        assert_eq!(&previews.get("a").unwrap().bytes[..], b"two");
        assert_eq!(previews.get("a").unwrap().number, 2);
        assert!(previews.keep("a", &preview_frame(2, b"three"), start + PREVIEW_EVERY));
        assert_eq!(previews.get("a").unwrap().content_type, "image/png");
        // Another job has its own; a frame that is no preview changes nothing.
        assert!(previews.keep("b", &preview_frame(1, b"b"), start));
        assert!(!previews.keep("b", &[0, 0, 0, 3, 1], start + PREVIEW_EVERY * 4));
        assert_eq!(previews.len(), 2);
        previews.forget("a");
        assert!(previews.get("a").is_none());
        assert_eq!(previews.len(), 1);
    }
}
