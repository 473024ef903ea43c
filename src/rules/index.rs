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
//! (nothing but `exists: false`), are then checked by the single-rule matcher:
//! in full, or, after an exact hit on an anchor that is a whole leaf condition,
//! only the rest of the rule (its residual, shared by the rules that differ only
//! in that leaf). The anchors only narrow the candidates, so the combined matcher
//! matches exactly what each rule alone does (property-tested in
//! `tests.rs` and in the `rules` fuzz target).

use rustc_hash::FxHashMap as HashMap;
use serde_json::{Map, Value};

use super::{AnythingBut, Doc, Field, Matcher, Node, Rule, Scalar};

/// Many rules matched together: which of them match an event.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Per rule: what is left to check after an exact hit on its anchor (an
    /// index into `residuals`, see [`residual`]); None when its anchors are
    /// not exact.
    residual: Vec<Option<u32>>,
    /// The distinct residuals.
    // NOTE: rules often differ only in their anchor (`data.tool` is X, `topic`
    // starts with "hook."), so they share one residual, which stays in cache.
    residuals: Vec<Node>,
    /// Each residual's index, by its `Debug` form (structural: strings are
    /// quoted, numbers written back exactly).
    residual_ids: HashMap<String, u32>,
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
    strings: HashMap<String, Ids>,
    numbers: HashMap<u64, Ids>,
    bools: [Ids; 2],
    nulls: Ids,
    /// Under the lowercased value.
    folded: HashMap<String, Ids>,
    prefixes: Affixes,
    suffixes: Affixes,
    folded_prefixes: Affixes,
    folded_suffixes: Affixes,
    /// Any value at all (numeric ranges, wildcards, anything-but, exists: true).
    present: Ids,
}

/// The rules filed under one key, in the order filed, each once in a row.
// NOTE: most keys (an exact value) file one rule: held inline, a lookup reads
// no second allocation.
#[derive(Debug, Clone)]
enum Ids {
    One(u32),
    Many(Vec<u32>),
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Many(Vec::new())
    }
}

impl Ids {
    fn push(&mut self, rule: u32) {
        match self {
            Ids::Many(v) if v.is_empty() => *self = Ids::One(rule),
            // NOTE: a rule filed twice under one key (two anchors alike) once.
            Ids::One(r) if *r == rule => {}
            Ids::One(r) => *self = Ids::Many(vec![*r, rule]),
            Ids::Many(v) => {
                if v.last() != Some(&rule) {
                    v.push(rule);
                }
            }
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Ids::One(r) => std::slice::from_ref(r),
            Ids::Many(v) => v,
        }
    }
}

/// Rules filed under a prefix (or suffix), with the lengths in use, so a value
/// is looked up once per distinct length rather than once per rule.
#[derive(Debug, Clone, Default)]
struct Affixes {
    by_text: HashMap<String, Ids>,
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

    fn hit(&self, s: &str, suffix: bool, out: &mut Hits, exact: bool) {
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
                out.add(rules.as_slice(), exact);
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

/// Anchors at paths (relative to the node they were found for), and whether
/// they are *exact*: all the matchers of one leaf, at `exact`'s path, each
/// anchor meeting its matcher exactly (see [`residual`]).
#[derive(Debug, Clone)]
struct Anchors {
    list: Vec<(Vec<String>, Anchor)>,
    exact: Option<Vec<String>>,
}

fn weakness(a: &Anchors) -> (u8, usize) {
    (
        a.list.iter().map(|(_, x)| x.weakness()).max().unwrap_or(0),
        a.list.len(),
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
            Anchors {
                list: a
                    .list
                    .into_iter()
                    .map(|(mut path, x)| {
                        path.insert(0, key.clone());
                        (path, x)
                    })
                    .collect(),
                exact: a.exact.map(|mut path| {
                    path.insert(0, key.clone());
                    path
                }),
            }
        }));
    }
    for group in &node.ors {
        // NOTE: one member must match: the union of the members' anchors, and
        // none if some member has none. Never exact: a hit says which member
        // may match, not that it does.
        let mut union = Vec::new();
        let mut all = true;
        for member in group {
            match node_anchors(member) {
                Some(a) => union.extend(a.list),
                None => {
                    all = false;
                    break;
                }
            }
        }
        consider(all.then_some(Anchors {
            list: union,
            exact: None,
        }));
    }
    best
}

fn field_anchors(field: &Field) -> Option<Anchors> {
    match field {
        // NOTE: a nested node with anchors cannot match the empty object that
        // an absent or scalar parent stands for, so its anchors are the field's.
        Field::Nested(node) => node_anchors(node),
        Field::Leaf(matchers) => {
            let mut list = Vec::with_capacity(matchers.len());
            for m in matchers {
                list.push((Vec::new(), matcher_anchor(m)?));
            }
            Some(Anchors {
                list,
                exact: matchers.iter().all(is_exact).then(Vec::new),
            })
        }
    }
}

/// Whether a scalar meets the matcher's anchor exactly when the matcher
/// matches it (the anchor is the whole condition, not a necessary part).
fn is_exact(m: &Matcher) -> bool {
    match m {
        Matcher::Exact(_) | Matcher::Prefix(_) | Matcher::Suffix(_) | Matcher::IgnoreCase(_) => {
            true
        }
        Matcher::Wildcard(g) => g.pieces.len() == 1,
        // NOTE: `present` also takes objects, arrays and empty arrays, which
        // the matchers judge differently.
        Matcher::AnythingBut(_) | Matcher::Numeric(_) | Matcher::Exists(_) | Matcher::Cidr(_) => {
            false
        }
    }
}

/// What is left of a rule once its exact anchor leaf at `path` is known to
/// match: the rule without that leaf, and without the nested objects that
/// leaves empty.
///
/// An exact hit is one reached through objects only (the leaf's value may be
/// an array of scalars, each element looked up): then each object on the path
/// is the one the rule's nested node is matched against, and the leaf holds
/// there. Hits that went through an array of objects or an array in an array
/// are not exact (the single-rule matcher judges each element as a whole),
/// and their candidates are checked in full.
fn residual(node: &Node, path: &[String]) -> Node {
    let (key, rest) = path.split_first().expect("an anchor path is never empty");
    let mut out = Node {
        fields: Vec::with_capacity(node.fields.len()),
        ors: node.ors.clone(),
    };
    for (k, field) in &node.fields {
        if k != key {
            out.fields.push((k.clone(), field.clone()));
            continue;
        }
        if let (Field::Nested(inner), false) = (field, rest.is_empty()) {
            let left = residual(inner, rest);
            // NOTE: an empty node matches any object, and the path's objects
            // are there (the hit was exact), so it is left out.
            if !left.fields.is_empty() || !left.ors.is_empty() {
                out.fields.push((k.clone(), Field::Nested(left)));
            }
        }
    }
    out
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
        let push = |v: &mut Ids| v.push(rule);
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

    /// The rules filed under one value at this path, as [`Hits`].
    fn hit(&self, v: &Value, exact: bool, out: &mut Hits) {
        // NOTE: `present` anchors are never exact.
        out.add(self.present.as_slice(), false);
        match v {
            Value::String(s) => {
                if let Some(r) = self.strings.get(s.as_str()) {
                    out.add(r.as_slice(), exact);
                }
                self.prefixes.hit(s, false, out, exact);
                self.suffixes.hit(s, true, out, exact);
                let folding = !self.folded.is_empty()
                    || !self.folded_prefixes.is_empty()
                    || !self.folded_suffixes.is_empty();
                if folding {
                    let lower = s.to_lowercase();
                    if let Some(r) = self.folded.get(lower.as_str()) {
                        out.add(r.as_slice(), exact);
                    }
                    self.folded_prefixes.hit(&lower, false, out, exact);
                    self.folded_suffixes.hit(&lower, true, out, exact);
                }
            }
            Value::Number(n) => {
                if let Some(r) = n.as_f64().and_then(|x| self.numbers.get(&number_key(x))) {
                    out.add(r.as_slice(), exact);
                }
            }
            Value::Bool(b) => out.add(self.bools[*b as usize].as_slice(), exact),
            Value::Null => out.add(self.nulls.as_slice(), exact),
            Value::Array(_) | Value::Object(_) => {}
        }
    }
}

/// Candidate rules collected for one event: `rule << 1 | 1` for a hit that is
/// not exact, `rule << 1` for an exact one, so that sorting puts a rule's exact
/// hit (if any) first.
struct Hits(Vec<u32>);

thread_local! {
    /// [`RuleSet::matching_doc`]'s candidates buffer, reused by the thread's events.
    static CANDIDATES: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Hits {
    fn add(&mut self, rules: &[u32], exact: bool) {
        let inexact = u32::from(!exact);
        self.0.extend(rules.iter().map(|&r| r << 1 | inexact));
    }
}

/// How a value was reached from the document's top level, for [`Hits`]: an
/// exact hit needs a path of objects, the last step possibly into an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Through objects only.
    Objects,
    /// An element of an array reached through objects only.
    Element,
    /// Through an array of objects, or an array in an array.
    Other,
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

    /// Collects the rules filed under `v` (the value at this path, reached
    /// as `reach` says) and under the values below it.
    fn collect(&self, v: &Value, reach: Reach, out: &mut Hits) {
        if let Some(ix) = &self.values {
            ix.hit(v, reach != Reach::Other, out);
        }
        match v {
            // NOTE: an array stands for each of its elements at the same path.
            Value::Array(items) => {
                let inner = match reach {
                    Reach::Objects => Reach::Element,
                    _ => Reach::Other,
                };
                for item in items {
                    self.collect(item, inner, out);
                }
            }
            Value::Object(m) if !self.children.is_empty() => {
                let inner = match reach {
                    Reach::Objects => Reach::Objects,
                    _ => Reach::Other,
                };
                self.collect_fields(m, inner, out)
            }
            _ => {}
        }
    }

    fn collect_fields<D: Doc + ?Sized>(&self, doc: &D, reach: Reach, out: &mut Hits) {
        for (key, child) in &self.children {
            if let Some(v) = doc.field(key) {
                child.collect(v, reach, out);
            }
        }
    }
}

impl RuleSet {
    /// Adds a rule; returns its index.
    pub fn add(&mut self, rule: Rule) -> usize {
        // NOTE: candidates carry a flag in the low bit (see `Hits`).
        assert!(self.rules.len() < (1 << 31), "too many rules in one set");
        let id = self.rules.len() as u32;
        let mut left = None;
        match node_anchors(&rule.root) {
            Some(anchors) => {
                left = anchors
                    .exact
                    .map(|path| self.intern(residual(&rule.root, &path)));
                for (path, anchor) in anchors.list {
                    self.root.file(&path, anchor, id);
                }
            }
            None => self.always.push(id),
        }
        self.rules.push(rule);
        self.residual.push(left);
        id as usize
    }

    fn intern(&mut self, node: Node) -> u32 {
        let next = self.residuals.len() as u32;
        let id = *self.residual_ids.entry(format!("{node:?}")).or_insert(next);
        if id == next {
            self.residuals.push(node);
        }
        id
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
        // NOTE: the candidates' buffer is the thread's, kept between events (one
        // allocation less per event, W1r); taken out while in use, so a matcher
        // called from inside (none today) would just start a buffer of its own.
        let mut cand = Hits(CANDIDATES.with(|c| c.take()));
        cand.0.clear();
        self.root.collect_fields(doc, Reach::Objects, &mut cand);
        cand.add(&self.always, false);
        let mut cand = cand.0;
        if !cand.is_empty() {
            cand.sort_unstable();
            // NOTE: keeps a rule's first entry, the exact one if it has one.
            cand.dedup_by_key(|c| *c >> 1);
            out.extend(
                cand.iter()
                    .filter(|&&c| {
                        let i = (c >> 1) as usize;
                        match (self.residual[i], c & 1 == 0) {
                            // NOTE: its anchor leaf holds; the rest decides.
                            (Some(left), true) => self.residuals[left as usize].matches(doc),
                            _ => self.rules[i].matches_doc(doc),
                        }
                    })
                    .map(|&c| (c >> 1) as usize),
            );
        }
        CANDIDATES.with(|c| c.set(cand));
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

    /// How many rules have an exact anchor (a hit on it leaves only the rest
    /// of the rule to check, nothing at all for a rule of one leaf).
    pub fn exactly_anchored(&self) -> usize {
        self.residual.iter().filter(|r| r.is_some()).count()
    }

    /// How many distinct residuals the exactly anchored rules share.
    pub fn distinct_residuals(&self) -> usize {
        self.residuals.len()
    }
}
