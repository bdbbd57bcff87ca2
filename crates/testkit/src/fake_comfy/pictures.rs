//! What the fake's runs show: the 1×1 PNG a SaveImage writes by default, a picture per run for screenshots, and
//! the JPEG of each preview frame.

/// An SVG as a workflow can write one: with a script, which must never run on the panel's origin.
pub const OUTPUT_SVG: &[u8] =
    b"<svg xmlns='http://www.w3.org/2000/svg' width='1' height='1'><script>alert(1)</script></svg>";

/// What SaveWEBM writes: a real 4-second 128×128 VP9 WebM (a keyframe a second, so a player can seek), made once
/// with `ffmpeg -f lavfi -i testsrc=size=128x128:rate=12:duration=4 -c:v libvpx-vp9 -b:v 60k -g 12 sample.webm`.
pub const OUTPUT_WEBM: &[u8] = include_bytes!("sample.webm");

/// A 1×1 PNG: what a finished run's SaveImage "wrote".
pub const OUTPUT_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A 64×64 JPEG whose colour follows `n`: each preview of a run looks different.
pub fn preview_jpeg(n: u64) -> Vec<u8> {
    let shade = (n.wrapping_mul(47) % 256) as u8;
    let pixels: Vec<u8> = (0..64 * 64)
        .flat_map(|i| [shade, (i % 64 * 4) as u8, 255 - shade])
        .collect();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode(&pixels, 64, 64, image::ExtendedColorType::Rgb8)
        .expect("a JPEG of pixels in memory");
    jpeg
}

/// A 256×256 PNG for run `n`: a soft two-colour gradient with a sun, each run in other colours.
pub fn output_picture(n: u64) -> Vec<u8> {
    let hue = (n.wrapping_mul(67) % 360) as f32;
    let colour = |h: f32, light: f32| -> [f32; 3] {
        let c = (1.0 - (2.0 * light - 1.0).abs()) * 0.7;
        let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
        let (r, g, b) = match (h / 60.0) as u32 {
            0 => (c, x, 0.0),
            1 => (x, c, 0.0),
            2 => (0.0, c, x),
            3 => (0.0, x, c),
            4 => (x, 0.0, c),
            _ => (c, 0.0, x),
        };
        let m = light - c / 2.0;
        [r + m, g + m, b + m]
    };
    let (top, bottom) = (colour(hue, 0.75), colour((hue + 40.0) % 360.0, 0.35));
    let mut pixels = Vec::with_capacity(256 * 256 * 3);
    for y in 0..256u32 {
        for x in 0..256u32 {
            let t = y as f32 / 255.0;
            let (dx, dy) = (x as f32 - 170.0, y as f32 - 90.0);
            let sun = (1.0 - (dx * dx + dy * dy).sqrt() / 40.0).clamp(0.0, 1.0);
            for k in 0..3 {
                let sky = top[k] * (1.0 - t) + bottom[k] * t;
                pixels.push(((sky + (1.0 - sky) * sun) * 255.0) as u8);
            }
        }
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        256,
        256,
        image::ExtendedColorType::Rgb8,
    )
    .expect("a PNG of pixels in memory");
    png
}
