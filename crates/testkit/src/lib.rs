pub mod fake_api_nodes;
pub mod fake_bfl;
pub mod fake_comfy;
pub mod fake_comfy_org;
pub mod fake_v0;
pub mod postgres;
