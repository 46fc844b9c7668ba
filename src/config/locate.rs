//! Maps a field path such as `endpoint[2].http.methods[0]` to a line and
//! column in the source, using `toml_edit`'s spans.
//!
//! Validation works on the deserialized values, which have no positions;
//! re-reading the document here keeps spans out of the config types. When
//! the path does not exist (a missing field), the nearest existing parent is
//! used, so the error still points into the right table.

use std::ops::Range;

use toml_edit::{Document, Item, Table, Value};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// Splits `a.b[3].c` into segments.
pub(super) fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_owned()));
        }
        while let Some((index, tail)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                segs.push(Seg::Index(i));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    segs
}

/// 1-based line and character column of a byte offset.
pub(super) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Position of a path, parsing the document afresh.
pub(super) fn position(source: &str, path: &[Seg]) -> (usize, usize) {
    Locator::new(source).position(path)
}

/// A parsed document kept for locating many paths.
pub(super) struct Locator<'s> {
    source: &'s str,
    doc: Option<Document<&'s str>>,
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'s> Locator<'s> {
    pub(super) fn new(source: &'s str) -> Self {
        Locator {
            source,
            doc: Document::parse(source).ok(),
        }
    }

    /// Line and column of the value at `path`, or of its nearest parent.
    pub(super) fn position(&self, path: &[Seg]) -> (usize, usize) {
        self.span(path)
            .map_or((1, 1), |span| line_col(self.source, span.start))
    }

    /// Position of a path given as text.
    pub(super) fn at(&self, path: &str) -> (usize, usize) {
        self.position(&parse_path(path))
    }

    fn span(&self, path: &[Seg]) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for seg in path {
            let Some((next, span)) = step(node, seg) else {
                break;
            };
            if span.is_some() {
                best = span;
            }
            node = next;
        }
        best
    }
}

fn step<'a>(node: Node<'a>, seg: &Seg) -> Option<(Node<'a>, Option<Range<usize>>)> {
    match (node, seg) {
        (Node::Table(t), Seg::Key(k)) => keyed(t.get_key_value(k)),
        (Node::Item(item), Seg::Key(k)) => keyed(item.as_table_like()?.get_key_value(k)),
        (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => keyed(t.get_key_value(k)),
        (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => {
            let t = a.get(*i)?;
            Some((Node::Table(t), t.span()))
        }
        (
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)),
            Seg::Index(i),
        ) => {
            let v = a.get(*i)?;
            Some((Node::Value(v), v.span()))
        }
        _ => None,
    }
}

fn keyed<'a>(
    found: Option<(&'a toml_edit::Key, &'a Item)>,
) -> Option<(Node<'a>, Option<Range<usize>>)> {
    let (key, item) = found?;
    // A sub-table's own span is its header; a value's is the value itself.
    let span = match item {
        Item::Value(v) => v.span().or_else(|| key.span()),
        Item::Table(t) => t.span().or_else(|| key.span()),
        _ => item.span().or_else(|| key.span()),
    };
    Some((Node::Item(item), span))
}
