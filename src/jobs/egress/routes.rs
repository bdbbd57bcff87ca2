//! Which calls to Comfy.org cost money, and what: the routes ComfyUI's API nodes call to start paid work (always a
//! `POST` under `/proxy/`), priced from the route and, where the price depends on them, the JSON body's fields;
//! polls, status reads, uploads and downloads are free. A `POST` at a route not in the table costs the ceiling
//! (`COMFY_PAID_NODE_MAX_USD`): a new paid route is never free by mistake.
//!
//! Built from ComfyUI's `comfy_api_nodes/` (the routes) and the prices its frontend's badges show
//! (`useNodePricing.ts`, Comfy-Org/ComfyUI_frontend, Sep 2025) and BFL's; a body Orchestrator cannot read (a
//! multipart form) is priced at the route's highest figure.

use http::{HeaderMap, Method};
use serde_json::Value;

use crate::bfl::catalog;

/// `POST`s that start nothing paid: uploads of a node's inputs, and polls and downloads some providers take as
/// `POST`. (Not `/auth/partner-node/renew`: a token it mints would spend outside every cap, and Orchestrator never
/// gives ComfyUI a partner token to renew.)
const FREE_POSTS: [&str; 7] = [
    "/customers/storage",
    "/proxy/pixverse/image/upload",
    "/proxy/veo/*/poll",
    "/proxy/rodin/api/v2/status",
    "/proxy/rodin/api/v2/download",
    "/proxy/moonvalley/uploads",
    "/proxy/hitpaw/api/task-status",
];

/// Comfy.org reports what a call cost in this header, in its credits (`comfy_api_nodes/util/client.py`
/// `PRICE_CREDITS_HEADER`, Comfy-Org/ComfyUI#15091).
pub const CREDITS_HEADER: &str = "x-comfy-credits-used";
/// Comfy credits per US dollar (`util/client.py`: `float(price) * 211`).
const CREDITS_PER_USD: f64 = 211.0;

/// A count read from a body is believed up to this (a typo of 10000 images is priced as 64, then refused at the cap).
const MAX_COUNT: i64 = 64;
/// The most images ComfyUI's image nodes that post forms ask for at once (OpenAI's edit node: `n` up to 8).
const FORM_COUNT: i64 = 8;

const fn usd(cents_tenths: i64) -> i64 {
    // Prices are written in tenths of a cent (`usd(40)` = $0.04) and kept in millionths of a dollar.
    cents_tenths * 1_000
}

/// How a paid route's price follows from its body (`None`: a body that is not JSON).
type PriceOf = fn(Option<&Value>) -> i64;

/// The paid routes: a pattern (`*` is one path segment) and its price.
const PAID: [(&str, PriceOf); 39] = [
    ("/proxy/openai/images/generations", openai_image),
    ("/proxy/openai/images/edits", openai_image),
    ("/proxy/ideogram/generate", ideogram_v2),
    ("/proxy/ideogram/ideogram-v3/generate", ideogram_v3),
    ("/proxy/ideogram/ideogram-v3/edit", ideogram_v3),
    ("/proxy/kling/v1/videos/text2video", kling_video),
    ("/proxy/kling/v1/videos/image2video", kling_video),
    ("/proxy/kling/v1/videos/video-extend", |_| usd(280)),
    ("/proxy/kling/v1/videos/lip-sync", |_| usd(100)),
    ("/proxy/kling/v1/videos/effects", kling_video),
    ("/proxy/kling/v1/images/generations", |b| {
        usd(28) * count(b, "/n")
    }),
    ("/proxy/kling/v1/images/kolors-virtual-try-on", |_| usd(70)),
    ("/proxy/luma/generations/image", |_| usd(18)),
    ("/proxy/luma/generations", luma_video),
    ("/proxy/minimax/video_generation", |_| usd(560)),
    ("/proxy/pika/generate/2.2/t2v", |_| usd(1_000)),
    ("/proxy/pika/generate/2.2/i2v", |_| usd(1_000)),
    ("/proxy/pika/generate/2.2/pikascenes", |_| usd(1_500)),
    ("/proxy/pika/generate/2.2/pikaframes", |_| usd(1_000)),
    ("/proxy/pika/generate/pikadditions", |_| usd(300)),
    ("/proxy/pika/generate/pikaswaps", |_| usd(300)),
    ("/proxy/pika/generate/pikaffects", |_| usd(450)),
    ("/proxy/pixverse/video/*/generate", |_| usd(1_200)),
    ("/proxy/recraft/image_generation", |b| {
        usd(80) * count(b, "/n")
    }),
    ("/proxy/recraft/images/*", |_| usd(250)),
    (
        "/proxy/stability/v2beta/stable-image/generate/ultra",
        |_| usd(80),
    ),
    ("/proxy/stability/v2beta/stable-image/generate/sd3", |_| {
        usd(65)
    }),
    ("/proxy/stability/v2beta/stable-image/upscale/*", |_| {
        usd(250)
    }),
    ("/proxy/stability/v2beta/audio/stable-audio-2/*", |_| {
        usd(200)
    }),
    ("/proxy/veo/*/generate", veo),
    ("/proxy/moonvalley/prompts/*", |_| usd(4_000)),
    ("/proxy/runway/image_to_video", |b| {
        usd(50) * seconds(b, "/duration", 10)
    }),
    ("/proxy/runway/text_to_image", |_| usd(80)),
    ("/proxy/rodin/api/v2/rodin", |_| usd(400)),
    ("/proxy/tripo/v2/openapi/task", |_| usd(500)),
    ("/proxy/byteplus/api/v3/images/generations", |b| {
        usd(30) * count(b, "/max_images")
    }),
    ("/proxy/byteplus/api/v3/contents/generations/tasks", |_| {
        usd(1_220)
    }),
    ("/proxy/vidu/*", |_| usd(400)),
    ("/proxy/wan/api/v1/services/aigc/*/*", |b| {
        usd(150) * seconds(b, "/parameters/duration", 10)
    }),
];

/// What a call costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Free,
    /// In millionths of a dollar.
    Paid(i64),
    /// A path the egress does not open (outside Comfy.org's proxy, its storage and the partner-node token).
    NotOpen,
}

/// What a call to `path` with `body` costs. A path with an encoded character is not one ComfyUI's nodes call,
/// and might be read otherwise upstream: it is not opened.
pub fn price(method: &Method, path: &str, body: &[u8], ceiling_micros: i64) -> Cost {
    let free_post = FREE_POSTS.iter().any(|pattern| matches(pattern, path));
    if path.contains('%') || (!path.starts_with("/proxy/") && !free_post) {
        return Cost::NotOpen;
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || free_post {
        return Cost::Free;
    }
    if let Some(micros) = bfl_price(path) {
        return Cost::Paid(micros);
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let priced = PAID
        .iter()
        .find(|(pattern, _)| matches(pattern, path))
        .map(|(_, price_of)| price_of(json.as_ref()));
    Cost::Paid(priced.unwrap_or(ceiling_micros))
}

/// The most one call of a provider's routes costs, read with no body (a node's widgets are not its routes' body
/// fields): what the dry run takes for a run of an API node whose own price it does not know, so the egress never
/// charges one call more than was confirmed for it. `category` is the node's (`api node/video/Kling`).
pub fn highest_for(category: &str) -> Option<i64> {
    let provider = category.rsplit('/').next()?;
    let prefix = match provider {
        "OpenAI" | "Sora" => "/proxy/openai/",
        "Ideogram" => "/proxy/ideogram/",
        "Kling" => "/proxy/kling/",
        "Luma" => "/proxy/luma/",
        "MiniMax" => "/proxy/minimax/",
        "Pika" => "/proxy/pika/",
        "PixVerse" => "/proxy/pixverse/",
        "Recraft" => "/proxy/recraft/",
        "Stability AI" => "/proxy/stability/",
        "Veo" => "/proxy/veo/",
        "Moonvalley Marey" => "/proxy/moonvalley/",
        "Runway" => "/proxy/runway/",
        "Rodin" => "/proxy/rodin/",
        "Tripo" => "/proxy/tripo/",
        "ByteDance" => "/proxy/byteplus/",
        "Vidu" => "/proxy/vidu/",
        "Wan" => "/proxy/wan/",
        _ => return None,
    };
    PAID.iter()
        .filter(|(pattern, _)| pattern.starts_with(prefix))
        .map(|(_, price_of)| price_of(None))
        .max()
}

/// What Comfy.org says a call cost, in millionths of a dollar, when its answer says it.
pub fn reported_cost(headers: &HeaderMap) -> Option<i64> {
    let credits: f64 = headers
        .get(CREDITS_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (credits.is_finite() && credits >= 0.0)
        .then(|| (credits / CREDITS_PER_USD * 1_000_000.0).round() as i64)
}

/// `pattern` with `*` standing for one path segment.
fn matches(pattern: &str, path: &str) -> bool {
    let (mut want, mut have) = (pattern.split('/'), path.split('/'));
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some("*"), Some(segment)) if !segment.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// A BFL model's generation (`POST /proxy/bfl/<model>/generate`, `nodes_bfl.py`), at BFL's price for the model
/// (the same table the dry run prices BFL's nodes with); FLUX.1 [pro] tools at $0.05.
fn bfl_price(path: &str) -> Option<i64> {
    let model = path
        .strip_prefix("/proxy/bfl/")?
        .strip_suffix("/generate")?;
    catalog::model(model)
        .map(|model| model.price_micros)
        .or_else(|| model.starts_with("flux-pro-1.0-").then_some(usd(50)))
}

/// A count field (`n`, `num_images`), 1 when a JSON body has none, at most [`MAX_COUNT`]. A form's fields are not
/// read: its count is taken as [`FORM_COUNT`].
fn count(body: Option<&Value>, pointer: &str) -> i64 {
    match body.and_then(|b| b.pointer(pointer)) {
        Some(value) => number(value).unwrap_or(MAX_COUNT).clamp(1, MAX_COUNT),
        None if body.is_some() => 1,
        None => FORM_COUNT,
    }
}

/// Seconds of video from a field (a number or a numeric string), `longest` when absent or unreadable.
fn seconds(body: Option<&Value>, pointer: &str, longest: i64) -> i64 {
    body.and_then(|b| b.pointer(pointer))
        .and_then(number)
        .map_or(longest, |s| s.clamp(1, longest))
}

fn number(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_f64().map(|f| f.ceil() as i64))
        .or_else(|| value.as_str()?.trim().parse().ok())
}

fn text<'a>(body: Option<&'a Value>, pointer: &str) -> &'a str {
    body.and_then(|b| b.pointer(pointer))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn openai_image(body: Option<&Value>) -> i64 {
    let each = match (text(body, "/model"), text(body, "/quality")) {
        ("dall-e-2", _) => usd(20),
        ("dall-e-3", "hd") => usd(120),
        ("dall-e-3", _) => usd(80),
        ("gpt-image-1", "low") => usd(20),
        ("gpt-image-1", "medium") => usd(70),
        _ => usd(300),
    };
    each * count(body, "/n")
}

fn ideogram_v2(body: Option<&Value>) -> i64 {
    let each = match text(body, "/image_request/model") {
        "V_1" => usd(60),
        "V_1_TURBO" => usd(20),
        "V_2_TURBO" => usd(50),
        _ => usd(80),
    };
    each * count(body, "/image_request/num_images")
}

fn ideogram_v3(body: Option<&Value>) -> i64 {
    let each = match text(body, "/rendering_speed") {
        "TURBO" => usd(100),
        "BALANCED" => usd(150),
        _ => usd(200),
    };
    each * count(body, "/num_images")
}

fn kling_video(body: Option<&Value>) -> i64 {
    let long = seconds(body, "/duration", 10) > 5;
    let per_five = match (text(body, "/model_name"), text(body, "/mode")) {
        ("kling-v1", "std") => usd(140),
        ("kling-v1-6", "std") => usd(280),
        ("kling-v1" | "kling-v1-6", "pro") => usd(490),
        _ => usd(1_400),
    };
    if long { per_five * 2 } else { per_five }
}

fn luma_video(body: Option<&Value>) -> i64 {
    match text(body, "/model") {
        "ray-1-6" => usd(350),
        "ray-flash-2" => usd(3_950),
        _ => usd(11_470),
    }
}

fn veo(body: Option<&Value>) -> i64 {
    let audio = body
        .and_then(|b| b.pointer("/parameters/generateAudio"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    match body.and_then(|b| b.pointer("/parameters/durationSeconds")) {
        // Veo 2 is priced per second; Veo 3 by the clip.
        Some(secs) => usd(500) * number(secs).unwrap_or(8).clamp(1, 8),
        None if audio => usd(3_200),
        None => usd(1_600),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CEILING: i64 = 1_000_000;

    fn post(path: &str, body: &Value) -> Option<i64> {
        match price(&Method::POST, path, body.to_string().as_bytes(), CEILING) {
            Cost::Paid(micros) => Some(micros),
            Cost::Free => None,
            Cost::NotOpen => panic!("{path} is not open"),
        }
    }

    #[test]
    fn a_generation_costs_its_price_and_a_poll_or_an_upload_nothing() {
        assert_eq!(
            post("/proxy/bfl/flux-pro-1.1-ultra/generate", &json!({})),
            Some(60_000)
        );
        assert_eq!(
            post("/proxy/bfl/flux-pro-1.0-canny/generate", &json!({})),
            Some(50_000)
        );
        let poll = price(
            &Method::GET,
            "/proxy/kling/v1/videos/text2video/abc",
            b"",
            CEILING,
        );
        assert_eq!(poll, Cost::Free);
        assert_eq!(
            post("/customers/storage", &json!({"file_name": "a.png"})),
            None
        );
        assert_eq!(
            post("/proxy/veo/veo-2.0-generate-001/poll", &json!({})),
            None
        );
        assert_eq!(
            post("/proxy/a-new-provider/video", &json!({})),
            Some(CEILING)
        );
    }

    #[test]
    fn the_body_sets_the_price_where_it_can() {
        let dalle = json!({"model": "dall-e-3", "quality": "hd", "n": 2});
        assert_eq!(
            post("/proxy/openai/images/generations", &dalle),
            Some(240_000)
        );
        let kling = json!({"model_name": "kling-v1", "mode": "std", "duration": "5"});
        assert_eq!(
            post("/proxy/kling/v1/videos/text2video", &kling),
            Some(140_000)
        );
        let veo2 = json!({"parameters": {"durationSeconds": 5}});
        assert_eq!(
            post("/proxy/veo/veo-2.0-generate-001/generate", &veo2),
            Some(2_500_000)
        );
        // A form Orchestrator does not read: the route's highest figure, for as many images as a node asks.
        let form = price(
            &Method::POST,
            "/proxy/ideogram/ideogram-v3/edit",
            b"--x\r\n",
            CEILING,
        );
        assert_eq!(form, Cost::Paid(FORM_COUNT * 200_000));
        let absurd = json!({"model": "dall-e-2", "n": 100000});
        assert_eq!(
            post("/proxy/openai/images/generations", &absurd),
            Some(64 * 20_000)
        );
    }

    #[test]
    fn a_providers_highest_call_bounds_its_nodes() {
        assert_eq!(highest_for("api node/video/Luma"), Some(11_470_000));
        assert_eq!(highest_for("api node/video/Kling"), Some(2_800_000));
        assert_eq!(highest_for("my nodes"), None);
    }

    #[test]
    fn the_egress_opens_only_comfy_orgs_proxy_and_its_storage() {
        let renew = price(&Method::POST, "/auth/partner-node/renew", b"{}", CEILING);
        assert_eq!(renew, Cost::NotOpen);
        let encoded = price(
            &Method::POST,
            "/proxy/veo/x%2Fgenerate/poll",
            b"{}",
            CEILING,
        );
        assert_eq!(encoded, Cost::NotOpen);
        for path in ["/customers/balance", "/users/me", "/admin"] {
            assert_eq!(
                price(&Method::GET, path, b"", CEILING),
                Cost::NotOpen,
                "{path}"
            );
        }
    }

    #[test]
    fn comfy_orgs_credits_are_read_as_dollars() {
        let mut headers = HeaderMap::new();
        headers.insert(CREDITS_HEADER, "8.44".parse().unwrap());
        assert_eq!(reported_cost(&headers), Some(40_000));
        headers.insert(CREDITS_HEADER, "-1".parse().unwrap());
        assert_eq!(reported_cost(&headers), None);
        assert_eq!(reported_cost(&HeaderMap::new()), None);
    }
}
