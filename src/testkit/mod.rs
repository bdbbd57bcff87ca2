pub mod fake_comfy;
