use super::*;

fn body(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

#[test]
fn flux2_is_priced_by_megapixel_from_the_request() {
    let price = |value: Value| validate(&body(value)).map(|r| (r.price_micros, r.megapixels));
    // One megapixel of [pro]: 3 credits.
    assert_eq!(
        price(json!({"model": "flux-2-pro", "prompt": "a"})),
        Ok((30_000, Some((1, 0))))
    );
    // 1536 × 1536 is 2.25 megapixels, billed as 3: 3 + 2 × 1.5 credits.
    assert_eq!(
        price(json!({"model": "flux-2-pro", "prompt": "a", "width": 1536, "height": 1536})),
        Ok((60_000, Some((3, 0))))
    );
    // An input image is reserved at its most, 4 megapixels: 3 + 4 × 1.5 credits for [pro]; 5 + 4 × 5 for [flex].
    let image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
    assert_eq!(
        price(json!({"model": "flux-2-pro", "prompt": "a", "input_image": image})),
        Ok((90_000, Some((1, 4))))
    );
    assert_eq!(
        price(json!({"model": "flux-2-flex", "prompt": "a", "input_image": image})).map(|p| p.0),
        Ok(250_000)
    );
    assert_eq!(
        price(json!({"model": "flux-2-klein-4b", "prompt": "a"})).map(|p| p.0),
        Ok(14_000)
    );
}

#[test]
fn flux2_fields_follow_bfls_reference() {
    let flex = validate(&body(json!({"model": "flux-2-flex", "prompt": "a"}))).unwrap();
    assert_eq!(flex.payload["steps"], 50);
    assert_eq!(flex.payload["guidance"], 4.5);
    assert_eq!(flex.payload["prompt_upsampling"], true);
    let pro = validate(&body(json!({"model": "flux-2-pro", "prompt": "a"}))).unwrap();
    assert!(pro.payload.get("prompt_upsampling").is_none());
    assert_eq!(
        (
            pro.payload["width"].as_u64(),
            pro.payload["height"].as_u64()
        ),
        (Some(1024), Some(1024))
    );
    let refused = |value: Value| validate(&body(value)).unwrap_err();
    assert!(
        refused(json!({"model": "flux-2-pro", "prompt": "a", "width": 1000})).contains_key("width")
    );
    assert!(
        refused(json!({"model": "flux-2-pro", "prompt": "a", "width": 2048, "height": 2064}))
            .contains_key("height")
    );
    assert!(refused(json!({"model": "flux-2-max", "prompt": "a", "width": 2048, "height": 2048, "safety_tolerance": 6}))
            .contains_key("safety_tolerance"));
    assert!(
        refused(json!({"model": "flux-2-pro", "prompt": "a", "steps": 10})).contains_key("steps")
    );
    assert!(
        refused(json!({"model": "flux-2-klein-4b", "prompt": "a", "input_image_5": "x"}))
            .contains_key("input_image_5")
    );
    assert!(
        refused(json!({"model": "flux-2-pro", "prompt": "a", "aspect_ratio": "1:1"}))
            .contains_key("aspect_ratio")
    );
}

#[test]
fn the_default_model_gets_its_documented_defaults() {
    let valid = validate(&body(json!({ "prompt": "a fox" }))).unwrap();
    assert_eq!(valid.model.name, "flux-pro-1.1");
    assert_eq!(
        Value::Object(valid.payload),
        json!({ "prompt": "a fox", "width": 1024, "height": 768, "safety_tolerance": 2,
                    "output_format": "jpeg", "prompt_upsampling": false })
    );
}

#[test]
fn every_bad_field_is_named_at_once() {
    let problems = validate(&body(json!({
        "prompt": "", "width": 1000, "height": 2048, "steps": 10, "seed": -1, "heigth": 3,
        "output_format": "gif", "safety_tolerance": 9
    })))
    .unwrap_err();
    let fields: Vec<&str> = problems.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "height",
            "heigth",
            "output_format",
            "prompt",
            "safety_tolerance",
            "seed",
            "steps",
            "width"
        ]
    );
    assert_eq!(
        problems["width"],
        "must be a multiple of 32 (try 992 or 1024)"
    );
    assert_eq!(
        problems["steps"],
        "flux-pro-1.1 takes no steps (only flux-dev, flux-2-flex do)"
    );
}

#[test]
fn ultra_takes_an_aspect_ratio_and_raw_not_a_size() {
    let valid = validate(&body(json!({
        "model": "flux-pro-1.1-ultra", "prompt": "x", "aspectRatio": "21:9", "raw": true
    })))
    .unwrap();
    assert_eq!(valid.payload["aspect_ratio"], "21:9");
    assert_eq!(valid.payload["raw"], true);
    let problems = validate(&body(json!({
        "model": "flux-pro-1.1-ultra", "prompt": "x", "aspect_ratio": "4:1", "width": 1024
    })))
    .unwrap_err();
    assert_eq!(problems["aspect_ratio"], "must lie between 21:9 and 9:21");
    assert!(
        problems["width"]
            .as_str()
            .unwrap()
            .contains("takes no width")
    );
}

#[test]
fn kontext_needs_an_image_and_caps_safety_at_two() {
    let problems = validate(&body(json!({
        "model": "flux-kontext-pro", "prompt": "make it blue", "safety_tolerance": 3
    })))
    .unwrap_err();
    assert_eq!(problems["input_image"], "is required (the image to edit)");
    assert_eq!(
        problems["safety_tolerance"],
        "must be a whole number from 0 to 2"
    );
    let valid = validate(&body(json!({
        "model": "flux-kontext-pro", "prompt": "make it blue",
        "input_image": "data:image/png;base64,iVBORw0KGgo="
    })))
    .unwrap();
    assert_eq!(valid.payload["input_image"], "iVBORw0KGgo=");
    assert_eq!(valid.payload["output_format"], "png");
}

#[test]
fn the_canonical_form_ignores_key_order_but_not_values() {
    let a = validate(&body(json!({ "prompt": "p", "width": 512, "seed": 1 }))).unwrap();
    let b = validate(&body(json!({ "seed": 1, "width": 512, "prompt": "p" }))).unwrap();
    let c = validate(&body(json!({ "seed": 2, "width": 512, "prompt": "p" }))).unwrap();
    assert_eq!(a.canonical(), b.canonical());
    assert_ne!(a.canonical(), c.canonical());
}

#[test]
fn every_model_has_a_price_and_an_unknown_model_is_refused() {
    assert!(MODELS.iter().all(|m| m.price_micros > 0));
    assert_eq!(model("flux-pro-1.1-ultra").unwrap().price_micros, 60_000);
    let problems = validate(&body(json!({ "model": "flux-9", "prompt": "x" }))).unwrap_err();
    assert!(
        problems["model"]
            .as_str()
            .unwrap()
            .starts_with("unknown model")
    );
}
