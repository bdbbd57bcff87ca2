pub mod fake_bfl;
pub mod fake_comfy;
pub mod fake_v0;
