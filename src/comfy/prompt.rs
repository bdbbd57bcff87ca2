//! A `POST /prompt` body read the cheap way, for the gateway's hot path: one pass over the text that lists each
//! node's id and `class_type` and finds `extra_data`, with nothing else parsed into a tree. What is forwarded is
//! the client's own text, with only `extra_data` written again when it holds Comfy.org credentials: the body
//! ComfyUI gets is the one that was judged. A body with a key twice (at the top or among the nodes) is refused, as
//! ComfyUI (Python's `json`, the last one wins) could read it otherwise than a reader that kept the first.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::credentials;

/// Why a body cannot be judged; either way it is not forwarded.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    NotJson,
    /// `prompt` is there but not one object of nodes, each with a string `class_type`, each id once.
    NotAWorkflow,
}

/// A prompt ready to forward.
pub struct Prompt {
    /// The body to send on.
    pub body: Vec<u8>,
    /// Each node's id and class, when the body has a `prompt` (ComfyUI answers `no_prompt` to one without).
    pub nodes: Option<Vec<(String, String)>>,
}

/// A node: an object (ComfyUI refuses anything else; serde's derive would also read an array positionally, so a
/// node is read by hand) with its `class_type`, given once.
struct Node<'a> {
    class_type: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a node object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
                let mut class_type = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "class_type" {
                        if class_type.is_some() {
                            return Err(de::Error::duplicate_field("class_type"));
                        }
                        class_type = Some(map.next_value::<Cow<'de, str>>()?);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(Node { class_type })
            }
        }
        deserializer.deserialize_map(NodeVisitor)
    }
}

/// The nodes of `prompt`: `(id, class)`, refusing an id given twice.
struct Nodes(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodesVisitor;
        impl<'de> Visitor<'de> for NodesVisitor {
            type Value = Nodes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of nodes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Nodes, A::Error> {
                let mut nodes = Vec::new();
                let mut seen = HashSet::new();
                while let Some(id) = map.next_key::<Cow<'de, str>>()? {
                    let node: Node = map.next_value()?;
                    let class = node
                        .class_type
                        .ok_or_else(|| de::Error::custom("a node without a class_type"))?;
                    if !seen.insert(id.clone()) {
                        return Err(de::Error::custom("a node id twice"));
                    }
                    nodes.push((id.into_owned(), class.into_owned()));
                }
                Ok(Nodes(nodes))
            }
        }
        deserializer.deserialize_map(NodesVisitor)
    }
}

/// What one pass over the body finds.
struct Top<'a> {
    nodes: Option<Vec<(String, String)>>,
    extra_data: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TopVisitor<'a> {
            type Value = Top<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a prompt object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'a>, A::Error> {
                let mut top = Top {
                    nodes: None,
                    extra_data: None,
                };
                let mut seen = HashSet::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom("a key twice"));
                    }
                    match key.as_ref() {
                        "prompt" => top.nodes = Some(map.next_value::<Nodes>()?.0),
                        "extra_data" => top.extra_data = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(TopVisitor(std::marker::PhantomData))
    }
}

pub fn read(bytes: &[u8]) -> Result<Prompt, Unreadable> {
    let top: Top = match serde_json::from_slice(bytes) {
        Ok(top) => top,
        // Only on this path is the body read again: JSON whose prompt is not a workflow, or not JSON at all.
        Err(_) => {
            return Err(
                match serde_json::from_slice::<BTreeMap<Cow<str>, Box<RawValue>>>(bytes) {
                    Ok(top) if top.contains_key("prompt") => Unreadable::NotAWorkflow,
                    _ => Unreadable::NotJson,
                },
            );
        }
    };
    let nodes = top.nodes;
    let body = match top.extra_data {
        Some(raw) if credentials::may_hold(raw.get().as_bytes(), None) => {
            let mut extra: BTreeMap<Cow<str>, Box<RawValue>> =
                serde_json::from_str(raw.get()).map_err(|_| Unreadable::NotJson)?;
            for key in credentials::KEYS {
                extra.remove(key);
            }
            let cleaned = serde_json::to_vec(&extra).map_err(|_| Unreadable::NotJson)?;
            // The raw value is a slice of `bytes`: the cleaned one takes its place.
            let start = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
            let end = start + raw.get().len();
            let mut body = Vec::with_capacity(bytes.len());
            body.extend_from_slice(&bytes[..start]);
            body.extend_from_slice(&cleaned);
            body.extend_from_slice(&bytes[end..]);
            body
        }
        _ => bytes.to_vec(),
    };
    Ok(Prompt { body, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn credentials_go_and_everything_else_stays() {
        let body = json!({"prompt": {"3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}},
            "client_id": "c", "extra_data": {"api_key_comfy_org": "k", "auth_token_comfy_org": "t",
            "extra_pnginfo": {"workflow": {"nodes": [1]}}}});
        let prompt = read(body.to_string().as_bytes()).unwrap();
        let sent: Value = serde_json::from_slice(&prompt.body).unwrap();
        assert_eq!(
            sent["extra_data"],
            json!({"extra_pnginfo": {"workflow": {"nodes": [1]}}})
        );
        assert_eq!(sent["prompt"], body["prompt"]);
        assert_eq!(sent["client_id"], "c");
        assert_eq!(prompt.nodes, Some(vec![("3".into(), "SaveImage".into())]));
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let body = br#"{"prompt": {"1": {"class_type": "SaveImage"}}, "prompt": {"1": {"class_type": "FluxProUltraImageNode"}}}"#;
        assert_eq!(read(body).err(), Some(Unreadable::NotAWorkflow));
        let body = br#"{"extra_data": {}, "extra_data": {"api_key_comfy_org": "b"}}"#;
        assert_eq!(read(body).err(), Some(Unreadable::NotJson));
        let body =
            br#"{"prompt": {"1": {"class_type": "SaveImage"}, "1": {"class_type": "IdeogramV3"}}}"#;
        assert_eq!(read(body).err(), Some(Unreadable::NotAWorkflow));
        // Inside extra_data a repeated credential goes all the same.
        let body = br#"{"prompt": {"1": {"class_type": "SaveImage"}}, "extra_data": {"api_key_comfy_org": "a", "api_key_comfy_org": "b"}}"#;
        let sent: Value = serde_json::from_slice(&read(body).unwrap().body).unwrap();
        assert_eq!(sent["extra_data"], json!({}));
    }

    /// The gateway's path for each of the 378 free classes of the recorded ComfyUI: judged free and forwarded byte
    /// for byte; each of the 100 paid ones is found.
    #[test]
    fn every_recorded_class_is_judged_as_comfy_marks_it() {
        let info: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/comfyui/object_info.json"
        ))
        .unwrap();
        let catalog = super::super::nodes::NodeCatalog::from_object_info(&info);
        let (mut free, mut paid) = (0, 0);
        for (class, spec) in info.as_object().unwrap() {
            let body = format!(
                r#"{{"prompt": {{"7": {{"class_type": {}, "inputs": {{}}}}}}, "client_id": "editor"}}"#,
                serde_json::to_string(class).unwrap()
            );
            let prompt = read(body.as_bytes()).unwrap();
            let is_paid = catalog.any_paid(prompt.nodes.as_ref().unwrap()).unwrap();
            assert_eq!(is_paid, spec["api_node"] == true, "{class}");
            if is_paid {
                paid += 1;
            } else {
                assert_eq!(prompt.body, body.as_bytes(), "{class} forwarded untouched");
                free += 1;
            }
        }
        assert_eq!((free, paid), (378, 100));
    }

    #[test]
    fn a_clean_body_is_forwarded_as_it_came() {
        let body = br#"{"prompt": {"9": {"class_type": "SaveImage", "inputs": {"x": 1e400}}}, "client_id": "\u0063"}"#;
        assert_eq!(read(body).unwrap().body, body.to_vec());
    }

    #[test]
    fn what_cannot_be_judged_is_not_forwarded() {
        assert_eq!(read(b"not json").err(), Some(Unreadable::NotJson));
        assert_eq!(read(br#"{"prompt": NaN}"#).err(), Some(Unreadable::NotJson));
        for body in [
            r#"{"prompt": [1]}"#,
            r#"{"prompt": {"1": ["FluxProUltraImageNode", {}]}}"#,
            r#"{"prompt": {"1": "SaveImage"}}"#,
            r#"{"prompt": {"1": {"inputs": {}}}}"#,
            r#"{"prompt": {"1": {"class_type": 5}}}"#,
            r#"{"prompt": {"1": {"class_type": "A", "class_type": "B"}}}"#,
        ] {
            assert_eq!(
                read(body.as_bytes()).err(),
                Some(Unreadable::NotAWorkflow),
                "{body}"
            );
        }
        assert!(read(br#"{"client_id": "c"}"#).unwrap().nodes.is_none());
    }
}
