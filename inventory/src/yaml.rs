//! A YAML tree whose nodes remember where they were written.
//!
//! serde-based loaders stop at the first error and forget positions, so the inventory is first read
//! into this marked tree (step one: syntax) and then converted by hand (step two: meaning), which
//! lets every diagnostic point at a line and column and lets all problems be reported together.
//!
//! The tree is built with bounded resources whatever the input: nesting depth, the number of
//! values (aliases included, so "billion laughs" files stop early) and the text copied by aliases
//! are all limited, and each limit is named in the error when it is hit.

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use crate::values::show;

/// Deepest nesting of collections accepted; an inventory needs about six levels.
pub const MAX_DEPTH: usize = 64;
/// Most values (scalars and collections, aliases expanded) one document may hold.
pub const MAX_NODES: usize = 250_000;
/// Most scalar text, in bytes, that aliases may copy in one document.
pub const MAX_ALIAS_BYTES: usize = 4 << 20;

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(marker: Marker) -> Self {
        // saphyr lines are 1-based, columns 0-based; editors expect both 1-based.
        Pos {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

#[derive(Debug)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug)]
pub enum Value {
    /// `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if is_null_literal(text))
    }

    /// Short description of what the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a sequence".into(),
            Value::Map(_) => "a mapping".into(),
            Value::Scalar { .. } if self.is_null() => "nothing (null)".into(),
            Value::Scalar { text, .. } => format!("`{}`", show(text)),
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Scalar text, unless the node is a collection or a null.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// A copy placed at `pos` (where an alias was written), so that problems found in the copy,
    /// such as a host repeated through an alias, point at the alias. Recursion is bounded by
    /// [`MAX_DEPTH`].
    fn copy_at(&self, pos: Pos) -> Node {
        let value = match &self.value {
            Value::Scalar { text, plain } => Value::Scalar {
                text: text.clone(),
                plain: *plain,
            },
            Value::Seq(items) => Value::Seq(items.iter().map(|item| item.copy_at(pos)).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(key, value)| (key.copy_at(pos), value.copy_at(pos)))
                    .collect(),
            ),
        };
        Node { pos, value }
    }
}

impl Drop for Node {
    /// Dropping iteratively keeps even a tree built from hostile input from overflowing the stack.
    fn drop(&mut self) {
        let mut pending: Vec<Node> = Vec::new();
        take_children(&mut self.value, &mut pending);
        while let Some(mut node) = pending.pop() {
            take_children(&mut node.value, &mut pending);
        }
    }
}

fn take_children(value: &mut Value, into: &mut Vec<Node>) {
    match value {
        Value::Scalar { .. } => {}
        Value::Seq(items) => into.append(items),
        Value::Map(entries) => {
            for (key, value) in entries.drain(..) {
                into.push(key);
                into.push(value);
            }
        }
    }
}

pub fn is_null_literal(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl SyntaxError {
    fn new(pos: Pos, message: impl Into<String>) -> Self {
        SyntaxError {
            pos,
            message: message.into(),
            hint: None,
        }
    }
}

enum Open {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
}

impl Open {
    fn pos(&self) -> Pos {
        match self {
            Open::Seq(pos, ..) | Open::Map(pos, ..) => *pos,
        }
    }
}

/// An anchored value with its size, so that expanding an alias can be budgeted before copying.
struct Anchored {
    node: Node,
    nodes: usize,
    bytes: usize,
}

fn size(node: &Node) -> (usize, usize) {
    let mut nodes = 0;
    let mut bytes = 0;
    let mut pending = vec![node];
    while let Some(node) = pending.pop() {
        nodes += 1;
        match &node.value {
            Value::Scalar { text, .. } => bytes += text.len(),
            Value::Seq(items) => pending.extend(items),
            Value::Map(entries) => {
                for (key, value) in entries {
                    pending.push(key);
                    pending.push(value);
                }
            }
        }
    }
    (nodes, bytes)
}

/// Parses a single-document YAML text. An empty text yields `None`.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Anchored> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;
    let mut alias_bytes = 0usize;

    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(next) => next,
            // Only the scanner's errors need moving; the reader's own point at the right place.
            Err(e) => return Err(locate(text, SyntaxError::new((*e.marker()).into(), e.info()), &stack)),
        };
        let pos = Pos::from(span.start);
        if matches!(
            event,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)
        ) {
            nodes += 1;
        }
        let finished = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError::new(
                        pos,
                        "expected a single YAML document, found a second one",
                    ));
                }
                None
            }
            Event::Scalar(text, style, anchor, _) => {
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                };
                Some((anchor, node))
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(anchored) => {
                    nodes += anchored.nodes;
                    alias_bytes += anchored.bytes;
                    if let Some(error) = over_budget(pos, nodes, alias_bytes) {
                        return Err(error);
                    }
                    Some((0, anchored.node.copy_at(pos)))
                }
                None => return Err(SyntaxError::new(pos, "alias refers to an unknown anchor")),
            },
            Event::SequenceStart(anchor, _) => {
                stack.push(Open::Seq(pos, anchor, Vec::new()));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Open::Map(pos, anchor, Vec::new(), None));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(pos, anchor, items)) => Some((
                    anchor,
                    Node {
                        pos,
                        value: Value::Seq(items),
                    },
                )),
                Some(Open::Map(pos, anchor, entries, _)) => Some((
                    anchor,
                    Node {
                        pos,
                        value: Value::Map(entries),
                    },
                )),
                None => None,
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        if let Some(error) = over_budget(pos, nodes, alias_bytes) {
            return Err(error);
        }
        if stack.len() > MAX_DEPTH {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "collections are nested more than {MAX_DEPTH} levels deep (limit of the inventory reader)"
                ),
                hint: None,
            });
        }
        let Some((anchor, node)) = finished else {
            continue;
        };
        if anchor != 0 {
            // The anchored copy counts against the same budgets as the copies aliases make.
            let (size_nodes, size_bytes) = size(&node);
            nodes += size_nodes;
            alias_bytes += size_bytes;
            if let Some(error) = over_budget(pos, nodes, alias_bytes) {
                return Err(error);
            }
            let copy = node.copy_at(node.pos);
            anchors.insert(
                anchor,
                Anchored {
                    node: copy,
                    nodes: size_nodes,
                    bytes: size_bytes,
                },
            );
        }
        match stack.last_mut() {
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, pending_key)) => match pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => *pending_key = Some(node),
            },
            None => root = Some(node),
        }
    }
    Ok(root)
}

fn over_budget(pos: Pos, nodes: usize, alias_bytes: usize) -> Option<SyntaxError> {
    let hint = Some("an inventory needs far less; check for anchors and aliases that repeat large parts".to_string());
    if nodes > MAX_NODES {
        return Some(SyntaxError {
            pos,
            message: format!(
                "the document holds more than {MAX_NODES} values with aliases expanded (limit of the inventory reader)"
            ),
            hint,
        });
    }
    if alias_bytes > MAX_ALIAS_BYTES {
        return Some(SyntaxError {
            pos,
            message: format!(
                "anchors and aliases copy more than {} MiB of text (limit of the inventory reader)",
                MAX_ALIAS_BYTES >> 20
            ),
            hint,
        });
    }
    None
}

/// Moves a syntax error to where the mistake was written and explains the common ones.
///
/// The YAML scanner notices many mistakes only when it reads the next token, often on the line
/// after the mistake or at the end of the file.
fn locate(text: &str, mut error: SyntaxError, stack: &[Open]) -> SyntaxError {
    let lines: Vec<&str> = text.split('\n').collect();
    let line_text = |line: usize| lines.get(line.wrapping_sub(1)).copied().unwrap_or("");
    let content_before = last_content_line(&lines, error.pos);
    let line_before = (1..error.pos.line).rev().find(|line| {
        let text = line_text(*line).trim();
        !text.is_empty() && !text.starts_with('#')
    });
    // `key:value` on the error line or the content line before it: a missing space.
    for line in [Some(error.pos.line), line_before].into_iter().flatten() {
        if let Some((column, key, value)) = missing_space_after_colon(line_text(line)) {
            return SyntaxError {
                pos: Pos { line, column },
                message: format!("a space is missing after the colon in `{}:{}`", show(key), show(value)),
                hint: Some(format!("write `{}: {}`", show(key), show(value))),
            };
        }
    }
    // A tab in the indentation of the error line or the line before: point at the tab.
    for line in [Some(error.pos.line), line_before].into_iter().flatten() {
        let current = line_text(line);
        let indent = &current[..current.len() - current.trim_start_matches([' ', '\t']).len()];
        if let Some(index) = indent.find('\t') {
            return SyntaxError {
                pos: Pos {
                    line,
                    column: index + 1,
                },
                message: format!(
                    "{}: a tab indents this line; YAML indentation must use spaces",
                    error.message
                ),
                hint: Some("YAML indentation must use spaces".into()),
            };
        }
    }
    // An unclosed `[` or `{`: the scanner stops at a later line (often the end of the file), so
    // point at the innermost opening bracket when it was written on an earlier line.
    if error.message.contains("flow") {
        let open = stack.iter().rev().find_map(|open| {
            let pos = open.pos();
            let opener = line_text(pos.line).chars().nth(pos.column.checked_sub(1)?)?;
            matches!(opener, '[' | '{').then_some((pos, opener))
        });
        if let Some((pos, opener)) = open.filter(|(pos, _)| pos.line < error.pos.line) {
            let closer = if opener == '[' { ']' } else { '}' };
            return SyntaxError {
                pos,
                message: format!("`{opener}` is never closed: expected `,` or `{closer}`"),
                hint: Some(format!("add the missing `{closer}`")),
            };
        }
    }
    // Otherwise a mistake detected at the start of a line was made at the end of the previous one.
    if let Some(line) = content_before {
        if error.pos.line > line && error.pos.column == 1 {
            let previous = line_text(line).trim_end();
            error.pos = Pos {
                line,
                column: previous.chars().count().max(1),
            };
        }
    }
    error
}

/// The last line before `pos` (or `pos`'s own line, if it has content before `pos`) with content.
fn last_content_line(lines: &[&str], pos: Pos) -> Option<usize> {
    let own = lines.get(pos.line.wrapping_sub(1))?;
    let before: String = own.chars().take(pos.column.saturating_sub(1)).collect();
    if !before.trim().is_empty() && !before.trim_start().starts_with('#') {
        return Some(pos.line);
    }
    (1..pos.line).rev().find(|line| {
        let text = lines[line - 1].trim();
        !text.is_empty() && !text.starts_with('#')
    })
}

/// `  - port:22` → the 1-based column of the colon, the key and the value.
pub(crate) fn missing_space_after_colon(line: &str) -> Option<(usize, &str, &str)> {
    let start = line.len() - line.trim_start_matches([' ', '-']).len();
    let rest = &line[start..];
    if rest.contains(": ") || rest.ends_with(':') {
        return None;
    }
    let colon = rest.find(':')?;
    let (key, value) = (&rest[..colon], &rest[colon + 1..]);
    let key_ok = !key.is_empty()
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let value = value.split(" #").next().unwrap_or(value).trim_end();
    let value_ok = !value.is_empty() && !value.starts_with("//") && !value.starts_with(':');
    (key_ok && value_ok).then(|| (line[..start + colon].chars().count() + 1, key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_space_is_recognised() {
        assert_eq!(missing_space_after_colon("  port:22"), Some((7, "port", "22")));
        assert_eq!(missing_space_after_colon("  - name:a"), Some((9, "name", "a")));
        assert_eq!(missing_space_after_colon("  mirror: file:///x"), None);
        assert_eq!(
            missing_space_after_colon("  url:http://x"),
            Some((6, "url", "http://x"))
        );
        assert_eq!(missing_space_after_colon("  - fd00::1"), None);
        assert_eq!(missing_space_after_colon("  ssh:"), None);
    }
}
