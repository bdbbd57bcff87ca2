//! The integration suite: the real server on a random port, in front of the fake ComfyUI.

mod support;

mod architecture;
mod bad_input;
mod binary;
mod editor;
mod events;
mod fleet;
mod flux;
mod gallery;
mod gateway;
mod guard;
mod hostile;
mod jobs;
mod keys;
mod mcp;
mod models;
mod openapi;
mod paid_nodes;
mod panel;
mod paths;
mod previews;
mod service;
mod slow_bodies;
mod template_form;
mod templates;
mod v0;
mod v2;
mod webhooks;
mod websocket;
