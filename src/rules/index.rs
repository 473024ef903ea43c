//! [`RuleSet`]: many rules compiled into one matcher, so the cost of matching
//! an event grows with the event's fields, not with the number of rules.
//!
//! The way aws/event-ruler and Quamina do it, the rules are indexed by field
//! path and then by value: each rule is filed under a few *anchors*, conditions
//! that every event it matches must meet (`data.tool` is `"Bash"`, `topic`
//! starts with `"hook."`, `data.size` is present). Matching an event walks its
//! fields along the index (only the paths some rule names), looks each value up
//! by exact value, case-folded value, prefix and suffix, and collects the rules
//! filed there; only those candidates, and the few rules with no anchor at all
//! (nothing but `exists: false`), are then checked in full by the single-rule
//! matcher. The anchors only narrow the candidates, so the combined matcher
//! matches exactly what each rule alone does (property-tested in
//! `tests.rs` and in the `rules` fuzz target).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{AnythingBut, Doc, Field, Matcher, Node, Rule, Scalar};

/// Many rules matched together: which of them match an event.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    root: PathNode,
    /// Rules with no anchor: checked for every event.
    always: Vec<u32>,
}

/// One field path of the index: what is filed under its values, and the paths
/// below it that some rule names.
#[derive(Debug, Clone, Default)]
struct PathNode {
    children: HashMap<String, PathNode>,
    values: Option<Box<ValueIndex>>,
}

/// Rules filed under the values of one field path.
#[derive(Debug, Clone, Default)]
struct ValueIndex {
    strings: HashMap<String, Vec<u32>>,
    numbers: HashMap<u64, Vec<u32>>,
    bools: [Vec<u32>; 2],
    nulls: Vec<u32>,
    /// Under the lowercased value.
    folded: HashMap<String, Vec<u32>>,
    prefixes: Affixes,
    suffixes: Affixes,
    folded_prefixes: Affixes,
    folded_suffixes: Affixes,
    /// Any value at all (numeric ranges, wildcards, anything-but, exists: true).
    present: Vec<u32>,
}

/// Rules filed under a prefix (or suffix), with the lengths in use, so a value
/// is looked up once per distinct length rather than once per rule.
#[derive(Debug, Clone, Default)]
struct Affixes {
    by_text: HashMap<String, Vec<u32>>,
    lengths: Vec<usize>,
}

impl Affixes {
    fn add(&mut self, text: &str, rule: u32) {
        self.by_text.entry(text.to_string()).or_default().push(rule);
        if let Err(i) = self.lengths.binary_search(&text.len()) {
            self.lengths.insert(i, text.len());
        }
    }

    fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    fn hit(&self, s: &str, suffix: bool, out: &mut Vec<u32>) {
        for &n in &self.lengths {
            if n > s.len() {
                break;
            }
            let piece = if suffix {
                let at = s.len() - n;
                if !s.is_char_boundary(at) {
                    continue;
                }
                &s[at..]
            } else {
                if !s.is_char_boundary(n) {
                    continue;
                }
                &s[..n]
            };
            if let Some(rules) = self.by_text.get(piece) {
                out.extend_from_slice(rules);
            }
        }
    }
}

/// A number as the exact index keys it: by value (`5` and `5.0` alike).
fn number_key(x: f64) -> u64 {
    // NOTE: -0.0 == 0.0 for the single-rule matcher, so they share a key.
    if x == 0.0 {
        0
    } else {
        x.to_bits()
    }
}

/// A condition every event a rule matches meets, at a field path.
#[derive(Debug, Clone)]
enum Anchor {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    Folded(String),
    Prefix(String),
    Suffix(String),
    FoldedPrefix(String),
    FoldedSuffix(String),
    Present,
}

impl Anchor {
    /// How many events it lets through, roughly: lower is more selective.
    fn weakness(&self) -> u8 {
        match self {
            Anchor::Str(_) | Anchor::Num(_) | Anchor::Bool(_) | Anchor::Null => 0,
            Anchor::Folded(_) => 1,
            Anchor::Prefix(_) | Anchor::Suffix(_) => 2,
            Anchor::FoldedPrefix(_) | Anchor::FoldedSuffix(_) => 3,
            Anchor::Present => 4,
        }
    }
}

/// Anchors at paths (relative to the node they were found for).
type Anchors = Vec<(Vec<String>, Anchor)>;

fn weakness(a: &Anchors) -> (u8, usize) {
    (
        a.iter().map(|(_, x)| x.weakness()).max().unwrap_or(0),
        a.len(),
    )
}

/// Anchors of a node: it matches a document only if the document meets one of
/// them. `None` when no such set is known (the node may match an empty object).
fn node_anchors(node: &Node) -> Option<Anchors> {
    let mut best: Option<Anchors> = None;
    let mut consider = |cand: Option<Anchors>| {
        if let Some(c) = cand {
            if best.as_ref().is_none_or(|b| weakness(&c) < weakness(b)) {
                best = Some(c);
            }
        }
    };
    // NOTE: every field and every `$or` group must match, so the anchors of any
    // one of them are anchors of the node: take the most selective.
    for (key, field) in &node.fields {
        consider(field_anchors(field).map(|a| {
            a.into_iter()
                .map(|(mut path, x)| {
                    path.insert(0, key.clone());
                    (path, x)
                })
                .collect()
        }));
    }
    for group in &node.ors {
        // NOTE: one member must match: the union of the members' anchors, and
        // none if some member has none.
        let mut union = Vec::new();
        let mut all = true;
        for member in group {
            match node_anchors(member) {
                Some(a) => union.extend(a),
                None => {
                    all = false;
                    break;
                }
            }
        }
        consider(all.then_some(union));
    }
    best
}

fn field_anchors(field: &Field) -> Option<Anchors> {
    match field {
        // NOTE: a nested node with anchors cannot match the empty object that
        // an absent or scalar parent stands for, so its anchors are the field's.
        Field::Nested(node) => node_anchors(node),
        Field::Leaf(matchers) => {
            let mut out = Vec::with_capacity(matchers.len());
            for m in matchers {
                out.push((Vec::new(), matcher_anchor(m)?));
            }
            Some(out)
        }
    }
}

/// The anchor of one leaf matcher; `None` for `exists: false` (it matches absence).
fn matcher_anchor(m: &Matcher) -> Option<Anchor> {
    Some(match m {
        Matcher::Exact(Scalar::Str(s)) => Anchor::Str(s.clone()),
        Matcher::Exact(Scalar::Num(x)) => Anchor::Num(*x),
        Matcher::Exact(Scalar::Bool(b)) => Anchor::Bool(*b),
        Matcher::Exact(Scalar::Null) => Anchor::Null,
        Matcher::Prefix(t) if t.ignore_case => Anchor::FoldedPrefix(t.text.clone()),
        Matcher::Prefix(t) => Anchor::Prefix(t.text.clone()),
        Matcher::Suffix(t) if t.ignore_case => Anchor::FoldedSuffix(t.text.clone()),
        Matcher::Suffix(t) => Anchor::Suffix(t.text.clone()),
        Matcher::IgnoreCase(t) => Anchor::Folded(t.clone()),
        // NOTE: a glob's literal head (or tail) is a prefix (suffix) every
        // match has.
        Matcher::Wildcard(g) => match (g.pieces.first(), g.pieces.last()) {
            (Some(head), _) if g.pieces.len() > 1 && !head.is_empty() => {
                Anchor::Prefix(head.clone())
            }
            (_, Some(tail)) if g.pieces.len() > 1 && !tail.is_empty() => {
                Anchor::Suffix(tail.clone())
            }
            (Some(whole), _) if g.pieces.len() == 1 => Anchor::Str(whole.clone()),
            _ => Anchor::Present,
        },
        Matcher::Exists(false) => return None,
        Matcher::Exists(true)
        | Matcher::Numeric(_)
        | Matcher::Cidr(_)
        | Matcher::AnythingBut(
            AnythingBut::Values(_)
            | AnythingBut::Prefix(_)
            | AnythingBut::Suffix(_)
            | AnythingBut::IgnoreCase(_)
            | AnythingBut::Wildcard(_),
        ) => Anchor::Present,
    })
}

impl ValueIndex {
    fn add(&mut self, anchor: Anchor, rule: u32) {
        let push = |v: &mut Vec<u32>| {
            // NOTE: a rule filed twice under one key (two anchors alike) once.
            if v.last() != Some(&rule) {
                v.push(rule);
            }
        };
        match anchor {
            Anchor::Str(s) => push(self.strings.entry(s).or_default()),
            Anchor::Num(x) => push(self.numbers.entry(number_key(x)).or_default()),
            Anchor::Bool(b) => push(&mut self.bools[b as usize]),
            Anchor::Null => push(&mut self.nulls),
            Anchor::Folded(s) => push(self.folded.entry(s).or_default()),
            Anchor::Prefix(s) => self.prefixes.add(&s, rule),
            Anchor::Suffix(s) => self.suffixes.add(&s, rule),
            Anchor::FoldedPrefix(s) => self.folded_prefixes.add(&s, rule),
            Anchor::FoldedSuffix(s) => self.folded_suffixes.add(&s, rule),
            Anchor::Present => push(&mut self.present),
        }
    }

    /// The rules filed under one value at this path.
    fn hit(&self, v: &Value, out: &mut Vec<u32>) {
        out.extend_from_slice(&self.present);
        match v {
            Value::String(s) => {
                if let Some(r) = self.strings.get(s.as_str()) {
                    out.extend_from_slice(r);
                }
                self.prefixes.hit(s, false, out);
                self.suffixes.hit(s, true, out);
                let folding = !self.folded.is_empty()
                    || !self.folded_prefixes.is_empty()
                    || !self.folded_suffixes.is_empty();
                if folding {
                    let lower = s.to_lowercase();
                    if let Some(r) = self.folded.get(lower.as_str()) {
                        out.extend_from_slice(r);
                    }
                    self.folded_prefixes.hit(&lower, false, out);
                    self.folded_suffixes.hit(&lower, true, out);
                }
            }
            Value::Number(n) => {
                if let Some(r) = n.as_f64().and_then(|x| self.numbers.get(&number_key(x))) {
                    out.extend_from_slice(r);
                }
            }
            Value::Bool(b) => out.extend_from_slice(&self.bools[*b as usize]),
            Value::Null => out.extend_from_slice(&self.nulls),
            Value::Array(_) | Value::Object(_) => {}
        }
    }
}

impl PathNode {
    fn file(&mut self, path: &[String], anchor: Anchor, rule: u32) {
        match path.split_first() {
            None => self
                .values
                .get_or_insert_with(Box::default)
                .add(anchor, rule),
            Some((key, rest)) => self
                .children
                .entry(key.clone())
                .or_default()
                .file(rest, anchor, rule),
        }
    }

    /// Collects the rules filed under `v` (the value at this path) and under
    /// the values below it.
    fn collect(&self, v: &Value, out: &mut Vec<u32>) {
        if let Some(ix) = &self.values {
            ix.hit(v, out);
        }
        match v {
            // NOTE: an array stands for each of its elements at the same path.
            Value::Array(items) => {
                for item in items {
                    self.collect(item, out);
                }
            }
            Value::Object(m) if !self.children.is_empty() => self.collect_fields(m, out),
            _ => {}
        }
    }

    fn collect_fields<D: Doc + ?Sized>(&self, doc: &D, out: &mut Vec<u32>) {
        for (key, child) in &self.children {
            if let Some(v) = doc.field(key) {
                child.collect(v, out);
            }
        }
    }
}

impl RuleSet {
    /// Adds a rule; returns its index.
    pub fn add(&mut self, rule: Rule) -> usize {
        let id = self.rules.len() as u32;
        match node_anchors(&rule.root) {
            Some(anchors) => {
                for (path, anchor) in anchors {
                    self.root.file(&path, anchor, id);
                }
            }
            None => self.always.push(id),
        }
        self.rules.push(rule);
        id as usize
    }

    /// The indexes of the rules the event matches, ascending.
    pub fn matching(&self, event: &Value) -> Vec<usize> {
        let empty = Map::new();
        let doc = event.as_object().unwrap_or(&empty);
        let mut out = Vec::new();
        self.matching_doc(doc, &mut out);
        out
    }

    /// [`RuleSet::matching`] on a document given by its top-level fields,
    /// into `out` (cleared first).
    pub fn matching_doc<D: Doc + ?Sized>(&self, doc: &D, out: &mut Vec<usize>) {
        out.clear();
        let mut cand: Vec<u32> = Vec::with_capacity(8 + self.always.len());
        self.root.collect_fields(doc, &mut cand);
        cand.extend_from_slice(&self.always);
        cand.sort_unstable();
        cand.dedup();
        out.extend(
            cand.into_iter()
                .filter(|&i| self.rules[i as usize].matches_doc(doc))
                .map(|i| i as usize),
        );
    }

    /// Whether some rule names the top-level field `key`.
    pub fn names_field(&self, key: &str) -> bool {
        self.rules.iter().any(|r| r.names_field(key))
    }

    /// How many rules it holds.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules have no anchor (checked for every event).
    pub fn unanchored(&self) -> usize {
        self.always.len()
    }
}
