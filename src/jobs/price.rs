//! What ComfyUI's API nodes report they cost while they run: WebSocket binary frames of event type 3 (TEXT,
//! `send_progress_text`: a u32 BE event type, a u32 BE node id length, the node id, then UTF-8 text), where nodes
//! polled by `PollingOperation` put `Price: …` (`comfy_api_nodes/apis/client.py` around `extracted_price`;
//! `shared/CONTRACTS.md`). Seen spelled `Price: $0.0600` and `Price: 0.06$`; no price means unknown.

const TEXT_EVENT: u32 = 3;

/// The node id and text of a progress-text frame; `None` for previews and anything malformed.
pub fn progress_text(frame: &[u8]) -> Option<(String, String)> {
    let event = u32::from_be_bytes(frame.get(0..4)?.try_into().ok()?);
    if event != TEXT_EVENT {
        return None;
    }
    let len = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
    let node = std::str::from_utf8(frame.get(8..8usize.checked_add(len)?)?).ok()?;
    let text = std::str::from_utf8(frame.get(8 + len..)?).ok()?;
    Some((node.to_owned(), text.to_owned()))
}

/// The dollar amount after `Price:` in a progress text, in millionths of a dollar.
pub fn reported_price(text: &str) -> Option<i64> {
    let at = text.find("Price:")?;
    let rest = text[at + "Price:".len()..].trim_start();
    let rest = rest.strip_prefix('$').unwrap_or(rest).trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let usd: f64 = rest[..end].parse().ok()?;
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1_000_000.0).round() as i64)
}

/// A progress-text frame, as ComfyUI sends one (for the fake ComfyUI and tests).
pub fn text_frame(node: &str, text: &str) -> Vec<u8> {
    let mut frame = TEXT_EVENT.to_be_bytes().to_vec();
    frame.extend((node.len() as u32).to_be_bytes());
    frame.extend(node.as_bytes());
    frame.extend(text.as_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_is_read_from_a_text_frame() {
        let frame = text_frame("4", "Price: $0.0600\nGenerating (3s)");
        let (node, text) = progress_text(&frame).unwrap();
        assert_eq!(node, "4");
        assert_eq!(reported_price(&text), Some(60_000));
        assert_eq!(reported_price("Price: 0.08$"), Some(80_000));
        assert_eq!(reported_price("Generating (12s)"), None);
        assert_eq!(reported_price("Price: n/a"), None);
    }

    #[test]
    fn previews_and_broken_frames_are_not_text() {
        assert_eq!(progress_text(&[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xd8]), None);
        assert_eq!(progress_text(&[0, 0, 0, 3, 0, 0, 0, 9, b'a']), None);
        assert_eq!(progress_text(&[0, 0]), None);
    }
}
