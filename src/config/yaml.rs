//! The YAML layer: a small tree in which every node knows its line and
//! column, and the reader helpers that walk it while collecting errors.
//!
//! The tree is built from `saphyr-parser` events rather than from a generic
//! YAML value type, because the validation needs what such types drop: the
//! position of every key and value, mappings in document order, and duplicate
//! keys (which a hash map would silently merge). Scalars stay text; the
//! validator decides what each one means where it stands.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span, SpannedEventReceiver, Tag};

use super::Diag;

/// A 1-based position in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// saphyr's markers have 1-based lines and 0-based columns.
    fn from_marker(m: Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    /// A scalar's text; `plain` is false when it was quoted, a block scalar
    /// or tagged `!!str`, i.e. when it can only be a string.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order, duplicates kept (the reader reports them).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A plain `~`, `null` or nothing at all.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a non-null scalar.
    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// Whether this is a scalar written without quotes.
    pub fn is_plain(&self) -> bool {
        matches!(self.value, Value::Scalar { plain: true, .. })
    }

    /// How the node reads in "must be X, not Y" messages. Only used for
    /// values that are never secrets.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Map(_) => "a mapping".to_string(),
            Value::Seq(_) => "a list".to_string(),
            Value::Scalar { .. } if self.is_null() => "nothing".to_string(),
            Value::Scalar { text, .. } => format!("{text:?}"),
        }
    }
}

/// Parse one YAML document. Syntax errors stop the parser, so at most one
/// of them is reported; anything else found here (tags, extra documents)
/// is reported and parsing goes on.
pub fn parse(src: &str, d: &mut Diag) -> Option<Node> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut builder, true) {
        d.at(
            Pos::from_marker(*e.marker()),
            format!("invalid YAML: {}", e.info()),
        );
        return None;
    }
    for (pos, msg) in builder.errors {
        d.at(pos, msg);
    }
    builder.root
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    errors: Vec<(Pos, String)>,
}

struct Frame {
    node: Node,
    anchor: usize,
    /// For a mapping: the key read, waiting for its value.
    key: Option<Node>,
}

impl Builder {
    fn check_tag(&mut self, tag: Option<&Cow<'_, Tag>>, pos: Pos, allowed: &str) -> bool {
        let Some(tag) = tag else { return false };
        if tag.is_yaml_core_schema() && tag.suffix == allowed {
            return true;
        }
        let shown = if tag.is_yaml_core_schema() {
            format!("!!{}", tag.suffix)
        } else {
            tag.to_string()
        };
        self.errors.push((
            pos,
            format!("YAML tag `{shown}` is not supported in a certherd configuration"),
        ));
        false
    }

    fn insert(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(parent) => match &mut parent.node.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match parent.key.take() {
                    None => parent.key = Some(node),
                    Some(key) => entries.push((key, node)),
                },
                Value::Scalar { .. } => unreachable!("scalars have no children"),
            },
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let pos = Pos::from_marker(span.start);
        match ev {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents == 2 {
                    self.errors.push((
                        pos,
                        "a configuration file holds one YAML document; remove this `---` and what follows"
                            .to_string(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = self.check_tag(tag.as_ref(), pos, "str");
                let plain = style == ScalarStyle::Plain && !forced_str;
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                };
                self.insert(node, anchor);
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_tag(tag.as_ref(), pos, "seq");
                self.stack.push(Frame {
                    node: Node {
                        pos,
                        value: Value::Seq(Vec::new()),
                    },
                    anchor,
                    key: None,
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.check_tag(tag.as_ref(), pos, "map");
                self.stack.push(Frame {
                    node: Node {
                        pos,
                        value: Value::Map(Vec::new()),
                    },
                    anchor,
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    self.insert(frame.node, frame.anchor);
                }
            }
            Event::Alias(id) => {
                // The parser rejects unknown anchors before we get here.
                if let Some(node) = self.anchors.get(&id).cloned() {
                    self.insert(node, 0);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// A mapping being read: keys are looked up by name, and everything wrong
/// with the keys themselves (unknown, duplicated, not yet supported) has
/// been reported when it was opened.
pub struct Map<'a> {
    pub node: &'a Node,
    entries: &'a [(Node, Node)],
    /// How the mapping is named in messages: "`acme`", "target \"web1\"".
    pub what: String,
}

impl<'a> Map<'a> {
    /// Open `node` as a mapping with the given keys. `later` are keys the
    /// interface defines but this version does not implement; they are
    /// errors of their own, and are not listed among the expected keys.
    pub fn open(
        node: &'a Node,
        what: impl Into<String>,
        allowed: &[&str],
        later: &[&str],
        d: &mut Diag,
    ) -> Option<Map<'a>> {
        let what = what.into();
        let Value::Map(entries) = &node.value else {
            d.at(
                node.pos,
                format!("{what} must be a mapping, not {}", node.describe()),
            );
            return None;
        };
        let mut seen: Vec<(&str, Pos)> = Vec::new();
        for (key, _) in entries {
            let Some(name) = key_text(key, d) else {
                continue;
            };
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == name) {
                d.at(
                    key.pos,
                    format!("duplicate key `{name}` in {what} (first at {first})"),
                );
                continue;
            }
            seen.push((name, key.pos));
            if later.contains(&name) {
                d.at(
                    key.pos,
                    format!("`{name}` is not supported by this version of certherd yet"),
                );
            } else if !allowed.contains(&name) {
                d.at(
                    key.pos,
                    format!(
                        "unknown key `{name}` in {what} (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Map {
            node,
            entries,
            what,
        })
    }

    pub fn pos(&self) -> Pos {
        self.node.pos
    }

    /// The value of `key`, unless it is absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entry(key).map(|(_, v)| v).filter(|v| !v.is_null())
    }

    /// The key node and value of `key`, null values included.
    pub fn entry(&self, key: &str) -> Option<(&'a Node, &'a Node)> {
        self.entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The value of a key that must be there.
    pub fn require(&self, key: &str, d: &mut Diag) -> Option<&'a Node> {
        match self.entry(key) {
            None => {
                d.at(self.pos(), format!("missing key `{key}` in {}", self.what));
                None
            }
            Some((_, v)) if v.is_null() => {
                d.at(v.pos, format!("`{key}` in {} has no value", self.what));
                None
            }
            Some((_, v)) => Some(v),
        }
    }
}

/// A mapping whose keys are names the user chose (certificates, solvers,
/// challenge patterns): entries in order, each name once. A name given
/// again is reported as `<noun> "<name>" is defined twice`.
pub fn named_entries<'a>(
    node: &'a Node,
    what: &str,
    noun: &str,
    d: &mut Diag,
) -> Vec<(&'a str, &'a Node, &'a Node)> {
    let Value::Map(entries) = &node.value else {
        d.at(
            node.pos,
            format!("{what} must be a mapping, not {}", node.describe()),
        );
        return Vec::new();
    };
    let mut out: Vec<(&str, &Node, &Node)> = Vec::with_capacity(entries.len());
    // name -> where it was first defined; a configuration can hold
    // thousands of certificates, so no pairwise comparison.
    let mut first: std::collections::HashMap<&str, Pos> =
        std::collections::HashMap::with_capacity(entries.len());
    for (key, value) in entries {
        let Some(name) = key_text(key, d) else {
            continue;
        };
        if let Some(pos) = first.get(name) {
            d.at(
                key.pos,
                format!("{noun} \"{name}\" is defined twice (first at {pos})"),
            );
            continue;
        }
        first.insert(name, key.pos);
        out.push((name, key, value));
    }
    out
}

/// The value of `key` in a mapping node, without reporting anything
/// (for keys that decide how the rest of the mapping is read).
pub fn peek<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn key_text<'a>(key: &'a Node, d: &mut Diag) -> Option<&'a str> {
    match &key.value {
        Value::Scalar { text, .. } => Some(text),
        _ => {
            d.at(
                key.pos,
                format!("a key must be a plain name, not {}", key.describe()),
            );
            None
        }
    }
}

/// A string value; `label` names it in the error.
pub fn string(node: &Node, label: &str, d: &mut Diag) -> Option<String> {
    match node.scalar() {
        Some(s) => Some(s.to_string()),
        None => {
            d.at(
                node.pos,
                format!("{label} must be a string, not {}", node.describe()),
            );
            None
        }
    }
}

/// A non-empty string value.
pub fn nonempty_string(node: &Node, label: &str, d: &mut Diag) -> Option<String> {
    let s = string(node, label, d)?;
    if s.trim().is_empty() {
        d.at(node.pos, format!("{label} is empty"));
        return None;
    }
    Some(s)
}

/// `true` or `false` (YAML 1.2 core schema spellings, unquoted).
pub fn boolean(node: &Node, label: &str, d: &mut Diag) -> Option<bool> {
    if node.is_plain() {
        match node.scalar() {
            Some("true" | "True" | "TRUE") => return Some(true),
            Some("false" | "False" | "FALSE") => return Some(false),
            _ => {}
        }
    }
    d.at(
        node.pos,
        format!("{label} must be true or false, not {}", node.describe()),
    );
    None
}

/// The items of a list.
pub fn list<'a>(node: &'a Node, label: &str, d: &mut Diag) -> Option<&'a [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        _ => {
            d.at(
                node.pos,
                format!("{label} must be a list, not {}", node.describe()),
            );
            None
        }
    }
}

/// A list of strings, with each item's position.
pub fn string_list<'a>(node: &'a Node, label: &str, d: &mut Diag) -> Vec<(String, &'a Node)> {
    let Some(items) = list(node, label, d) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let s = string(item, &format!("each item of {label}"), d)?;
            Some((s, item))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse_ok(src: &str) -> Node {
        let mut d = Diag::new(PathBuf::from("t.yaml"));
        let node = parse(src, &mut d).expect("a document");
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        node
    }

    #[test]
    fn positions_are_one_based() {
        let root = parse_ok("a: 1\nbb:\n  c: [x, \"y\"]\n");
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert_eq!(root.pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
        let Value::Map(inner) = &entries[1].1.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.pos, Pos { line: 3, column: 3 });
        let Value::Seq(items) = &inner[0].1.value else {
            panic!("not a seq")
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 3,
                column: 10
            }
        );
        assert!(items[0].is_plain());
        assert!(!items[1].is_plain());
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_reader() {
        let root = parse_ok("a: 1\na: 2\n");
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn aliases_are_expanded() {
        let root = parse_ok("a: &x [1, 2]\nb: *x\n");
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert!(matches!(&entries[1].1.value, Value::Seq(v) if v.len() == 2));
    }

    #[test]
    fn str_tag_makes_a_string() {
        let root = parse_ok("a: !!str 0640\n");
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert!(!entries[0].1.is_plain());
    }

    #[test]
    fn syntax_error_is_positioned() {
        let mut d = Diag::new(PathBuf::from("t.yaml"));
        assert!(parse("a: 1\n  b: 2\n", &mut d).is_none());
        assert_eq!(
            d.errors[0].to_string(),
            "t.yaml:2:4: invalid YAML: mapping values are not allowed in this context"
        );
    }
}
