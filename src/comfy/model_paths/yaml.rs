//! The YAML reader: the file's bytes (bounded) into a small tree of what a model-folder list is made of, refusing
//! tags, anchors, aliases, several documents and deep nesting before anything is interpreted.

use std::io::Read;
use std::path::Path;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::{MAX_DEPTH, MAX_FILE_BYTES, Problem, Severity, at, problem};

// One problem per file read: its size does not matter.
#[allow(clippy::result_large_err)]
pub(super) fn read_limited(path: &Path) -> Result<String, Problem> {
    let file = std::fs::File::open(path).map_err(|e| {
        problem(
            Severity::Error,
            "file_unreadable",
            format!("cannot read the file: {e}"),
        )
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            problem(
                Severity::Error,
                "file_unreadable",
                format!("cannot read the file: {e}"),
            )
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(problem(
            Severity::Error,
            "file_too_large",
            format!(
                "the file is larger than {} KiB; a model-folder list never is",
                MAX_FILE_BYTES / 1024
            ),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| problem(Severity::Error, "not_utf8", "the file is not UTF-8 text"))
}

/// The parsed file: only what a model-folder list is made of.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Scalar {
        text: String,
        plain: bool,
        span: Span,
    },
    Sequence {
        span: Span,
    },
    Mapping {
        entries: Vec<(String, Span, Node)>,
        span: Span,
    },
}

impl Node {
    pub(super) fn span(&self) -> Span {
        match self {
            Self::Scalar { span, .. } | Self::Sequence { span } | Self::Mapping { span, .. } => {
                *span
            }
        }
    }

    /// A plain scalar YAML 1.1 (PyYAML) reads as null.
    pub(super) fn is_null(&self) -> bool {
        matches!(self, Self::Scalar { text, plain: true, .. } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// Open containers, innermost last; a mapping's with the key whose value is still to come.
type Stack = Vec<(Node, Option<(String, Span)>)>;

/// The document's root, or why the file is refused. `None` inside `Ok` is an empty document.
#[allow(clippy::result_large_err)]
pub(super) fn parse(text: &str) -> Result<Option<Node>, Problem> {
    refuse_unprintable(text)?;
    let mut stack = Stack::new();
    let mut root = None;
    let mut documents = 0;
    for (event, span) in events(text)? {
        let Some(node) = node_of(event, span, &mut stack, &mut documents)? else {
            continue;
        };
        place(&mut stack, &mut root, node)?;
    }
    Ok(root)
}

/// PyYAML's reader refuses the whole file for one character outside its printable set, even in a comment.
#[allow(clippy::result_large_err)]
fn refuse_unprintable(text: &str) -> Result<(), Problem> {
    if let Some((at, c)) = text.char_indices().find(|(_, c)| !printable(*c)) {
        let before = &text[..at];
        let mut refusal = problem(
            Severity::Error,
            "unprintable_character",
            format!(
                "the file holds the character U+{:04X}, which YAML does not allow (ComfyUI fails to start on it)",
                u32::from(c)
            ),
        );
        refusal.line = Some(before.matches('\n').count() + 1);
        refusal.column = Some(before.rsplit('\n').next().unwrap_or("").chars().count() + 1);
        return Err(refusal);
    }
    Ok(())
}

/// Every event of the file, or its first syntax error.
#[allow(clippy::result_large_err)]
fn events(text: &str) -> Result<Vec<(Event<'_>, Span)>, Problem> {
    let mut events = Vec::new();
    for event in Parser::new_from_str(text) {
        match event {
            Ok(event) => events.push(event),
            Err(error) => {
                let mut refusal = problem(
                    Severity::Error,
                    "yaml_syntax",
                    format!(
                        "YAML syntax error: {} (ComfyUI fails to start on it)",
                        error.info()
                    ),
                );
                refusal.line = Some(error.marker().line());
                refusal.column = Some(error.marker().col() + 1);
                return Err(refusal);
            }
        }
    }
    Ok(events)
}

/// The node an event finishes, if any: a scalar, or the container it closes. A container's start is pushed on
/// `stack`; tags, anchors, aliases, a second document and deep nesting are refused.
#[allow(clippy::result_large_err)]
fn node_of(
    event: Event<'_>,
    span: Span,
    stack: &mut Stack,
    documents: &mut usize,
) -> Result<Option<Node>, Problem> {
    let node = match event {
        Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {
            return Ok(None);
        }
        Event::DocumentStart(_) => {
            *documents += 1;
            if *documents > 1 {
                return Err(at(
                    problem(
                        Severity::Error,
                        "several_documents",
                        "the file holds more than one YAML document",
                    ),
                    span,
                ));
            }
            return Ok(None);
        }
        Event::Alias(_) => {
            return Err(at(
                problem(
                    Severity::Error,
                    "yaml_alias",
                    "YAML aliases (*name) are not allowed in this file",
                ),
                span,
            ));
        }
        Event::Scalar(_, _, anchor, tag)
        | Event::SequenceStart(anchor, tag)
        | Event::MappingStart(anchor, tag)
            if anchor != 0 || tag.is_some() =>
        {
            let (code, what) = if tag.is_some() {
                ("yaml_tag", "YAML tags (!tag) are not allowed in this file")
            } else {
                (
                    "yaml_anchor",
                    "YAML anchors (&name) are not allowed in this file",
                )
            };
            return Err(at(problem(Severity::Error, code, what), span));
        }
        Event::Scalar(text, style, _, _) => Node::Scalar {
            text: text.into_owned(),
            plain: style == ScalarStyle::Plain,
            span,
        },
        Event::SequenceStart(..) | Event::MappingStart(..) => {
            if stack.len() >= MAX_DEPTH {
                return Err(at(
                    problem(
                        Severity::Error,
                        "too_deep",
                        "the file is nested deeper than a model-folder list is",
                    ),
                    span,
                ));
            }
            let node = if matches!(event, Event::SequenceStart(..)) {
                Node::Sequence { span }
            } else {
                Node::Mapping {
                    entries: Vec::new(),
                    span,
                }
            };
            stack.push((node, None));
            return Ok(None);
        }
        Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
            Some((node, _)) => node,
            None => return Ok(None),
        },
    };
    Ok(Some(node))
}

/// Places a finished node: a mapping key, a mapping value, a sequence item (dropped: only its shape matters), or
/// the root.
#[allow(clippy::result_large_err)]
fn place(stack: &mut Stack, root: &mut Option<Node>, node: Node) -> Result<(), Problem> {
    match stack.last_mut() {
        None => *root = Some(node),
        Some((Node::Sequence { .. }, _)) => {}
        Some((Node::Mapping { entries, .. }, pending)) => match pending.take() {
            None => match node {
                Node::Scalar { text, span, .. } => *pending = Some((text, span)),
                other => {
                    return Err(at(
                        problem(
                            Severity::Error,
                            "complex_key",
                            "a mapping key must be plain text",
                        ),
                        other.span(),
                    ));
                }
            },
            Some((key, key_span)) => entries.push((key, key_span, node)),
        },
        Some((Node::Scalar { .. }, _)) => unreachable!("scalars are never pushed"),
    }
    Ok(())
}

/// A character PyYAML reads (its reader's `NON_PRINTABLE` complement): tab, line breaks, printable ASCII, and
/// the printable rest of Unicode.
pub(super) fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}
