//! Content routing rules: event patterns with Amazon EventBridge semantics,
//! compiled once and matched against an event as a JSON document.
//!
//! Plain Rust (no pyo3). A rule is a JSON object whose keys name fields of the
//! event document (`id`, `topic`, `type`, `source`, `timestamp`,
//! `correlation_id`, `priority`, `data`, ...), nested as the document nests.
//! Every key must match (AND); a leaf is a non-empty array of matchers, any of
//! which may match (OR); `"$or": [rule, rule, ...]` at any level matches when
//! one of its rules does. When the event's value is an array, the leaf matches
//! when any element does.
//!
//! | matcher | matches |
//! |---|---|
//! | `"text"`, `5`, `true`, `null` | exactly that value (numbers by value: `5` matches `5.0`) |
//! | `""` | the empty string |
//! | `{"prefix": "a"}`, `{"suffix": "z"}` | strings that start / end with it |
//! | `{"prefix": {"equals-ignore-case": "a"}}` (and `suffix`) | the same, any case |
//! | `{"equals-ignore-case": "Abc"}` | strings equal to it in any case |
//! | `{"wildcard": "a*b"}` | strings matching the glob (`*` any run, `\*` a star) |
//! | `{"anything-but": v \| [v, ...]}` | a present value other than those |
//! | `{"anything-but": {"prefix" \| "suffix" \| "equals-ignore-case" \| "wildcard": ...}}` | a present value that does not match that |
//! | `{"numeric": [">", 0, "<=", 5]}`, `{"numeric": ["=", 3]}` | numbers in the range |
//! | `{"exists": true}` / `{"exists": false}` | the field is present / absent |
//! | `{"cidr": "10.0.0.0/24"}` | IPv4 or IPv6 address strings inside the block |
//!
//! Rules are checked when compiled: [`Rule::compile`] names the JSON path of the
//! first problem ([`RuleError`]).

use std::net::IpAddr;

use serde_json::{Map, Value};

mod doc;
mod index;
mod lanes;
mod project;
#[cfg(test)]
mod tests;

pub use doc::{stored_doc, EventDoc, EVENT_FIELDS};
pub use index::RuleSet;
pub use lanes::{field_bits, LaneRules};
pub use project::Projection;

/// Why a rule does not compile: where (a JSON path, `$` for the root) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The JSON path of the problem, e.g. `$.data.tool[1]`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for RuleError {}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError {
        path: path.to_string(),
        message: message.into(),
    })
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    // NOTE: shared, so the combined matcher of every route holding a rule
    // costs a pointer per rule, not a copy.
    root: std::sync::Arc<Node>,
}

/// One object level of a rule: every field must match, and each `$or` group
/// must have a member that matches the same object.
#[derive(Debug, Clone, Default)]
struct Node {
    fields: Vec<(String, Field)>,
    ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone)]
enum Field {
    Nested(Node),
    Leaf(Vec<Matcher>),
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(Scalar),
    Prefix(Text),
    Suffix(Text),
    IgnoreCase(String),
    Wildcard(Glob),
    AnythingBut(AnythingBut),
    Numeric(Range),
    Exists(bool),
    Cidr(Cidr),
}

/// A JSON scalar as an exact matcher compares it.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

impl Scalar {
    fn of(v: &Value) -> Option<Scalar> {
        Some(match v {
            Value::String(s) => Scalar::Str(s.clone()),
            Value::Number(n) => Scalar::Num(n.as_f64()?),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Null => Scalar::Null,
            _ => return None,
        })
    }

    fn equals(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::String(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => b.as_f64() == Some(*a),
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Null, Value::Null) => true,
            _ => false,
        }
    }
}

/// A string to compare, exactly or in any case (stored lowercased then).
#[derive(Debug, Clone)]
struct Text {
    text: String,
    ignore_case: bool,
}

impl Text {
    fn starts(&self, s: &str) -> bool {
        if self.ignore_case {
            s.to_lowercase().starts_with(&self.text)
        } else {
            s.starts_with(&self.text)
        }
    }

    fn ends(&self, s: &str) -> bool {
        if self.ignore_case {
            s.to_lowercase().ends_with(&self.text)
        } else {
            s.ends_with(&self.text)
        }
    }
}

#[derive(Debug, Clone)]
enum AnythingBut {
    Values(Vec<Scalar>),
    Prefix(String),
    Suffix(String),
    IgnoreCase(Vec<String>),
    Wildcard(Vec<Glob>),
}

/// A numeric range: optional lower and upper bounds, each open or closed.
#[derive(Debug, Clone, Default)]
struct Range {
    low: Option<(f64, bool)>,
    high: Option<(f64, bool)>,
}

impl Range {
    fn contains(&self, x: f64) -> bool {
        let above = match self.low {
            None => true,
            Some((b, true)) => x >= b,
            Some((b, false)) => x > b,
        };
        let below = match self.high {
            None => true,
            Some((b, true)) => x <= b,
            Some((b, false)) => x < b,
        };
        above && below
    }
}

/// A glob of literal pieces separated by `*`.
#[derive(Debug, Clone)]
struct Glob {
    pieces: Vec<String>,
}

impl Glob {
    fn parse(pattern: &str, path: &str) -> Result<Glob, RuleError> {
        let mut pieces = vec![String::new()];
        let mut chars = pattern.chars().peekable();
        let mut last_star = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n @ ('*' | '\\')) => {
                        pieces.last_mut().expect("never empty").push(n);
                        last_star = false;
                    }
                    _ => return err(path, "a backslash may only escape '*' or '\\'"),
                },
                '*' => {
                    if last_star {
                        return err(path, "consecutive '*' characters are not allowed");
                    }
                    pieces.push(String::new());
                    last_star = true;
                }
                c => {
                    pieces.last_mut().expect("never empty").push(c);
                    last_star = false;
                }
            }
        }
        Ok(Glob { pieces })
    }

    fn matches(&self, s: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("never empty");
        let Some(mut s) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return s.is_empty();
        };
        // NOTE: greedy leftmost placement of each middle piece is optimal for
        // `*`-only globs, so this is linear in the input (no backtracking).
        for piece in middle {
            match s.find(piece.as_str()) {
                Some(i) => s = &s[i + piece.len()..],
                None => return false,
            }
        }
        s.len() >= last.len() && s.ends_with(last.as_str())
    }
}

/// An IP block.
#[derive(Debug, Clone)]
struct Cidr {
    net: u128,
    mask: u128,
    v6: bool,
}

impl Cidr {
    fn parse(text: &str, path: &str) -> Result<Cidr, RuleError> {
        let bad = || {
            err(
                path,
                format!("{text:?} is not a CIDR block like 10.0.0.0/24"),
            )
        };
        let Some((addr, bits)) = text.split_once('/') else {
            return bad();
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return bad();
        };
        let Ok(bits) = bits.parse::<u32>() else {
            return bad();
        };
        let (value, width, v6) = match addr {
            IpAddr::V4(a) => (u32::from(a) as u128, 32, false),
            IpAddr::V6(a) => (u128::from(a), 128, true),
        };
        if bits > width {
            return bad();
        }
        let mask = if bits == 0 {
            0
        } else {
            (u128::MAX << (128 - bits)) >> (128 - width)
        };
        Ok(Cidr {
            net: value & mask,
            mask,
            v6,
        })
    }

    fn contains(&self, s: &str) -> bool {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if !self.v6 => (u32::from(a) as u128) & self.mask == self.net,
            Ok(IpAddr::V6(a)) if self.v6 => u128::from(a) & self.mask == self.net,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Compiling

impl Rule {
    /// Compiles a rule (a JSON object), or says where and why it is invalid.
    pub fn compile(rule: &Value) -> Result<Rule, RuleError> {
        match rule {
            Value::Object(map) => Ok(Rule {
                root: std::sync::Arc::new(compile_node(map, "$")?),
            }),
            _ => err("$", "a rule must be a JSON object"),
        }
    }

    /// Whether the event document matches.
    pub fn matches(&self, event: &Value) -> bool {
        match event {
            Value::Object(map) => self.root.matches(map),
            _ => self.root.matches(&Map::new()),
        }
    }

    /// Whether a document given by its top-level fields matches (an event's
    /// fields without building the whole JSON object, see [`EventDoc`]).
    pub fn matches_doc<D: Doc + ?Sized>(&self, doc: &D) -> bool {
        self.root.matches(doc)
    }

    /// Whether the rule names `key` at the top level (in a field or a `$or`).
    pub fn names_field(&self, key: &str) -> bool {
        self.root.names(key)
    }
}

fn child(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_string()))
    }
}

fn compile_node(map: &Map<String, Value>, path: &str) -> Result<Node, RuleError> {
    if map.is_empty() {
        return err(
            path,
            "an empty object matches nothing in particular; leave it out",
        );
    }
    let mut node = Node::default();
    for (key, value) in map {
        let here = child(path, key);
        if key == "$or" {
            let Value::Array(alts) = value else {
                return err(&here, "\"$or\" takes an array of rules");
            };
            if alts.len() < 2 {
                return err(&here, "\"$or\" needs at least two rules");
            }
            let mut group = Vec::with_capacity(alts.len());
            for (i, alt) in alts.iter().enumerate() {
                let at = format!("{here}[{i}]");
                match alt {
                    Value::Object(m) => group.push(compile_node(m, &at)?),
                    _ => return err(&at, "each \"$or\" member must be a rule object"),
                }
            }
            node.ors.push(group);
            continue;
        }
        let field = match value {
            Value::Object(m) => Field::Nested(compile_node(m, &here)?),
            Value::Array(items) => {
                if items.is_empty() {
                    return err(&here, "an empty list of matchers matches nothing");
                }
                let mut matchers = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    matchers.push(compile_matcher(item, &format!("{here}[{i}]"))?);
                }
                Field::Leaf(matchers)
            }
            _ => {
                return err(
                    &here,
                    format!("a field's matchers go in a list, e.g. [{value}], or nest an object"),
                )
            }
        };
        node.fields.push((key.clone(), field));
    }
    Ok(node)
}

fn string_operand<'a>(v: &'a Value, op: &str, path: &str) -> Result<&'a str, RuleError> {
    v.as_str().ok_or_else(|| RuleError {
        path: path.to_string(),
        message: format!("\"{op}\" takes a string, got {v}"),
    })
}

fn compile_text(v: &Value, op: &str, path: &str) -> Result<Text, RuleError> {
    match v {
        Value::String(s) => Ok(Text {
            text: s.clone(),
            ignore_case: false,
        }),
        Value::Object(m) if m.len() == 1 && m.contains_key("equals-ignore-case") => {
            let s = string_operand(&m["equals-ignore-case"], "equals-ignore-case", path)?;
            Ok(Text {
                text: s.to_lowercase(),
                ignore_case: true,
            })
        }
        _ => err(
            path,
            format!("\"{op}\" takes a string or {{\"equals-ignore-case\": string}}, got {v}"),
        ),
    }
}

fn compile_matcher(item: &Value, path: &str) -> Result<Matcher, RuleError> {
    let map = match item {
        Value::Object(m) => m,
        Value::Array(_) => return err(path, "a matcher cannot be a list"),
        scalar => {
            let s = Scalar::of(scalar).ok_or_else(|| RuleError {
                path: path.to_string(),
                message: format!("{scalar} is not a number this matcher can compare"),
            })?;
            return Ok(Matcher::Exact(s));
        }
    };
    if map.len() != 1 {
        return err(
            path,
            format!(
                "a matcher object has exactly one operator, got {}",
                map.keys()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let (op, v) = map.iter().next().expect("one entry");
    let here = child(path, op);
    Ok(match op.as_str() {
        "prefix" => Matcher::Prefix(compile_text(v, op, &here)?),
        "suffix" => Matcher::Suffix(compile_text(v, op, &here)?),
        "equals-ignore-case" => Matcher::IgnoreCase(string_operand(v, op, &here)?.to_lowercase()),
        "wildcard" => Matcher::Wildcard(Glob::parse(string_operand(v, op, &here)?, &here)?),
        "exists" => match v {
            Value::Bool(b) => Matcher::Exists(*b),
            _ => return err(&here, format!("\"exists\" takes true or false, got {v}")),
        },
        "cidr" => Matcher::Cidr(Cidr::parse(string_operand(v, op, &here)?, &here)?),
        "numeric" => Matcher::Numeric(compile_range(v, &here)?),
        "anything-but" => Matcher::AnythingBut(compile_anything_but(v, &here)?),
        other => {
            return err(
                path,
                format!(
                    "unknown operator {other:?} (known: prefix, suffix, equals-ignore-case, \
                     wildcard, anything-but, numeric, exists, cidr)"
                ),
            )
        }
    })
}

fn compile_anything_but(v: &Value, path: &str) -> Result<AnythingBut, RuleError> {
    let scalar = |x: &Value, at: &str| -> Result<Scalar, RuleError> {
        match x {
            Value::String(_) | Value::Number(_) => Ok(Scalar::of(x).expect("a scalar")),
            _ => err(
                at,
                format!("\"anything-but\" compares strings or numbers, got {x}"),
            ),
        }
    };
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return err(path, "\"anything-but\" needs at least one value");
            }
            let strings = items.iter().all(Value::is_string);
            let numbers = items.iter().all(Value::is_number);
            if !strings && !numbers {
                return err(
                    path,
                    "\"anything-but\" takes a list of only strings or only numbers",
                );
            }
            let values = items
                .iter()
                .enumerate()
                .map(|(i, x)| scalar(x, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?;
            Ok(AnythingBut::Values(values))
        }
        Value::Object(m) if m.len() == 1 => {
            let (op, x) = m.iter().next().expect("one entry");
            let here = child(path, op);
            let strings = |x: &Value| -> Result<Vec<String>, RuleError> {
                match x {
                    Value::String(s) => Ok(vec![s.clone()]),
                    Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => Ok(a
                        .iter()
                        .map(|s| s.as_str().expect("a string").to_string())
                        .collect()),
                    _ => err(
                        &here,
                        format!("\"{op}\" takes a string or a list of strings, got {x}"),
                    ),
                }
            };
            match op.as_str() {
                "prefix" => Ok(AnythingBut::Prefix(
                    string_operand(x, op, &here)?.to_string(),
                )),
                "suffix" => Ok(AnythingBut::Suffix(
                    string_operand(x, op, &here)?.to_string(),
                )),
                "equals-ignore-case" => Ok(AnythingBut::IgnoreCase(
                    strings(x)?.iter().map(|s| s.to_lowercase()).collect(),
                )),
                "wildcard" => Ok(AnythingBut::Wildcard(
                    strings(x)?
                        .iter()
                        .map(|s| Glob::parse(s, &here))
                        .collect::<Result<_, _>>()?,
                )),
                other => err(
                    path,
                    format!(
                        "\"anything-but\" takes values or one of prefix, suffix, \
                         equals-ignore-case, wildcard; got {other:?}"
                    ),
                ),
            }
        }
        Value::Object(_) => err(path, "\"anything-but\" takes one operator object"),
        x => Ok(AnythingBut::Values(vec![scalar(x, path)?])),
    }
}

fn compile_range(v: &Value, path: &str) -> Result<Range, RuleError> {
    let Value::Array(items) = v else {
        return err(path, "\"numeric\" takes a list like [\">\", 0, \"<=\", 5]");
    };
    if items.is_empty() || items.len() % 2 != 0 || items.len() > 4 {
        return err(
            path,
            "\"numeric\" takes one or two (operator, number) pairs, like [\">\", 0, \"<=\", 5]",
        );
    }
    let mut range = Range::default();
    for (i, pair) in items.chunks(2).enumerate() {
        let at = format!("{path}[{}]", 2 * i);
        let op = pair[0].as_str().ok_or_else(|| RuleError {
            path: at.clone(),
            message: format!("expected an operator (<, <=, =, >=, >), got {}", pair[0]),
        })?;
        let Some(x) = pair[1].as_f64() else {
            return err(
                &format!("{path}[{}]", 2 * i + 1),
                format!("expected a number, got {}", pair[1]),
            );
        };
        let slot = match op {
            ">" | ">=" => &mut range.low,
            "<" | "<=" => &mut range.high,
            "=" => {
                if items.len() != 2 {
                    return err(&at, "\"=\" stands alone: [\"=\", 5]");
                }
                range.low = Some((x, true));
                range.high = Some((x, true));
                continue;
            }
            other => return err(&at, format!("unknown numeric operator {other:?}")),
        };
        if slot.is_some() {
            return err(&at, "two lower (or two upper) bounds");
        }
        *slot = Some((x, op.ends_with('=')));
    }
    if let (Some((lo, _)), Some((hi, _))) = (range.low, range.high) {
        if lo > hi {
            return err(path, format!("the range is empty: {lo} > {hi}"));
        }
    }
    Ok(range)
}

// ---------------------------------------------------------------------------
// Matching

/// The top level of a document: its fields by name.
pub trait Doc {
    /// The value of the field `key`, if present.
    fn field(&self, key: &str) -> Option<&Value>;
}

impl Doc for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        // NOTE: event objects are small; comparing a few keys is cheaper than
        // hashing one (the map's hasher is SipHash). Keys are unique, so both
        // find the same entry.
        if self.len() <= 8 {
            self.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
        } else {
            self.get(key)
        }
    }
}

impl Node {
    fn matches<D: Doc + ?Sized>(&self, doc: &D) -> bool {
        self.fields.iter().all(|(k, f)| f.matches(doc.field(k)))
            && self
                .ors
                .iter()
                .all(|group| group.iter().any(|n| n.matches(doc)))
    }

    fn names(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == key) || self.ors.iter().flatten().any(|n| n.names(key))
    }
}

impl Field {
    fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            Field::Nested(node) => match value {
                Some(Value::Object(m)) => node.matches(m),
                Some(Value::Array(items)) => items.iter().any(|v| match v {
                    Value::Object(m) => node.matches(m),
                    _ => false,
                }),
                // NOTE: an absent (or non-object) parent has no fields: only
                // rules satisfied by absence (`exists: false`) match it.
                _ => node.matches(&Map::new()),
            },
            Field::Leaf(matchers) => match value {
                None => matchers.iter().any(|m| matches!(m, Matcher::Exists(false))),
                // NOTE: an empty array has no value to match, like an absent field.
                Some(Value::Array(items)) if items.is_empty() => {
                    matchers.iter().any(|m| matches!(m, Matcher::Exists(false)))
                }
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|v| matchers.iter().any(|m| m.matches_value(v))),
                Some(v) => matchers.iter().any(|m| m.matches_value(v)),
            },
        }
    }
}

impl Matcher {
    /// Whether a present value matches.
    fn matches_value(&self, v: &Value) -> bool {
        // NOTE: matchers compare leaf values; an object there (the rule has a
        // list where the event has an object) only "exists".
        if v.is_object() {
            return matches!(self, Matcher::Exists(true));
        }
        match self {
            Matcher::Exact(s) => s.equals(v),
            Matcher::Prefix(t) => v.as_str().is_some_and(|s| t.starts(s)),
            Matcher::Suffix(t) => v.as_str().is_some_and(|s| t.ends(s)),
            Matcher::IgnoreCase(t) => v.as_str().is_some_and(|s| s.to_lowercase() == *t),
            Matcher::Wildcard(g) => v.as_str().is_some_and(|s| g.matches(s)),
            Matcher::Numeric(r) => v.as_f64().is_some_and(|x| r.contains(x)),
            Matcher::Exists(present) => *present,
            Matcher::Cidr(c) => v.as_str().is_some_and(|s| c.contains(s)),
            Matcher::AnythingBut(ab) => match ab {
                AnythingBut::Values(vals) => !v.is_object() && !vals.iter().any(|s| s.equals(v)),
                // NOTE: a value that is not a string cannot start, end or match
                // like the excluded strings, so it is "anything but" them.
                AnythingBut::Prefix(p) => v.as_str().is_none_or(|s| !s.starts_with(p.as_str())),
                AnythingBut::Suffix(p) => v.as_str().is_none_or(|s| !s.ends_with(p.as_str())),
                AnythingBut::IgnoreCase(vals) => {
                    v.as_str().is_none_or(|s| !vals.contains(&s.to_lowercase()))
                }
                AnythingBut::Wildcard(globs) => v
                    .as_str()
                    .is_none_or(|s| !globs.iter().any(|g| g.matches(s))),
            },
        }
    }
}
