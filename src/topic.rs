//! Hierarchical topics: validation and a segment trie that routes a topic to the
//! subscriptions whose patterns match it.
//!
//! A topic is one or more non-empty segments separated by `.` (`hook.tool`). A
//! pattern may also use two wildcards, each a whole segment: `*` matches exactly
//! one segment and `**` matches zero or more segments (`hook.**` matches `hook`,
//! `hook.tool` and `hook.subagent.start`; `a.**.b` matches `a.b` and `a.x.y.b`).
//!
//! Routing cost does not grow with the number of subscriptions: literal patterns
//! are found by hash, wildcard patterns by walking the trie one segment at a time,
//! and the result for each topic is cached until the subscriptions change.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// Why a topic or a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicError {
    /// The topic or pattern as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid topic {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for TopicError {}

fn err(input: &str, reason: impl Into<String>) -> TopicError {
    TopicError {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

fn check_segments<'a>(input: &'a str, what: &str) -> Result<Vec<&'a str>, TopicError> {
    if input.is_empty() {
        return Err(err(input, format!("{what} is empty")));
    }
    if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(input, format!("{what} contains the character {c:?}")));
    }
    let segments: Vec<&str> = input.split('.').collect();
    if let Some(pos) = segments.iter().position(|s| s.is_empty()) {
        return Err(err(
            input,
            format!(
                "{what} has an empty segment at position {pos} (leading, trailing or doubled '.')"
            ),
        ));
    }
    Ok(segments)
}

/// Checks a published topic: non-empty segments and no wildcards.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    let segments = check_segments(topic, "topic")?;
    if segments.iter().any(|s| s.contains('*')) {
        return Err(err(
            topic,
            "a published topic cannot contain wildcards ('*' or '**')",
        ));
    }
    Ok(())
}

/// One segment of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A literal segment.
    Literal(Box<str>),
    /// `*`: exactly one segment.
    Star,
    /// `**`: zero or more segments.
    GlobStar,
}

/// A validated subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    segments: Vec<Segment>,
    text: String,
}

impl Pattern {
    /// Parses and validates a pattern such as `hook.*` or `system.**`.
    pub fn parse(pattern: &str) -> Result<Self, TopicError> {
        let raw = check_segments(pattern, "pattern")?;
        let mut segments = Vec::with_capacity(raw.len());
        for s in raw {
            let seg = match s {
                "*" => Segment::Star,
                "**" => Segment::GlobStar,
                s if s.contains('*') => {
                    return Err(err(
                        pattern,
                        format!(
                        "wildcard mixed into segment {s:?}: '*' and '**' must be whole segments"
                    ),
                    ))
                }
                s => Segment::Literal(s.into()),
            };
            // NOTE: `**.**` means the same as `**`; collapsing keeps matching linear.
            if seg == Segment::GlobStar && segments.last() == Some(&Segment::GlobStar) {
                continue;
            }
            segments.push(seg);
        }
        Ok(Pattern {
            segments,
            text: pattern.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Whether `topic` matches this pattern (the topic is not validated here).
    pub fn matches(&self, topic: &str) -> bool {
        let parts: Vec<&str> = topic.split('.').collect();
        match_from(&self.segments, &parts)
    }
}

/// Glob matching over segments: `**` as a string glob's `*`, `*` as its `?`.
///
/// NOTE: the classic two-pointer algorithm with one backtrack point (the last `**`
/// seen): a later `**` subsumes every choice an earlier one could still make, so
/// O(pattern x topic) steps. The recursive form was exponential in the number of
/// `**` (the topic fuzz target found an 11 s input: `**.*.*.**.*.**...`).
fn match_from(pattern: &[Segment], topic: &[&str]) -> bool {
    let (mut p, mut t) = (0, 0);
    // (pattern index after the last `**`, topic index it was tried at)
    let mut backtrack: Option<(usize, usize)> = None;
    while t < topic.len() {
        match pattern.get(p) {
            Some(Segment::GlobStar) => {
                p += 1;
                backtrack = Some((p, t));
                continue;
            }
            Some(Segment::Star) => {
                p += 1;
                t += 1;
                continue;
            }
            Some(Segment::Literal(l)) if **l == *topic[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        // A mismatch (or the pattern ran out): let the last `**` swallow one more.
        match backtrack {
            Some((bp, bt)) => {
                backtrack = Some((bp, bt + 1));
                p = bp;
                t = bt + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|s| matches!(s, Segment::GlobStar))
}

#[derive(Default, Debug)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    globstar: Option<Box<Node>>,
    subscribers: Vec<usize>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.globstar.is_none()
            && self.subscribers.is_empty()
    }

    fn insert(&mut self, segments: &[Segment], id: usize) {
        match segments.split_first() {
            None => {
                if !self.subscribers.contains(&id) {
                    self.subscribers.push(id);
                }
            }
            Some((Segment::Literal(l), rest)) => {
                self.literal.entry(l.clone()).or_default().insert(rest, id)
            }
            Some((Segment::Star, rest)) => self
                .star
                .get_or_insert_with(Default::default)
                .insert(rest, id),
            Some((Segment::GlobStar, rest)) => self
                .globstar
                .get_or_insert_with(Default::default)
                .insert(rest, id),
        }
    }

    fn remove(&mut self, segments: &[Segment], id: usize) {
        match segments.split_first() {
            None => self.subscribers.retain(|s| *s != id),
            Some((Segment::Literal(l), rest)) => {
                if let Some(child) = self.literal.get_mut(l) {
                    child.remove(rest, id);
                    if child.is_empty() {
                        self.literal.remove(l);
                    }
                }
            }
            Some((Segment::Star, rest)) => {
                if let Some(child) = self.star.as_mut() {
                    child.remove(rest, id);
                    if child.is_empty() {
                        self.star = None;
                    }
                }
            }
            Some((Segment::GlobStar, rest)) => {
                if let Some(child) = self.globstar.as_mut() {
                    child.remove(rest, id);
                    if child.is_empty() {
                        self.globstar = None;
                    }
                }
            }
        }
    }

    /// Adds the subscribers of every path matching `topic[at..]` from this node.
    ///
    /// NOTE: `seen` holds the (`**` node, topic position) pairs already walked: several
    /// `**` on one path reach the same node at the same position in many ways, and
    /// without it the walk was exponential in the number of `**` (found by the topic
    /// fuzz target). Ids may repeat in `out`; the router deduplicates.
    fn collect(
        &self,
        topic: &[&str],
        at: usize,
        out: &mut Vec<usize>,
        seen: &mut HashSet<(*const Node, usize)>,
    ) {
        if let Some(g) = &self.globstar {
            // NOTE: `**` may swallow any suffix, including none.
            for i in at..=topic.len() {
                if seen.insert((&**g as *const Node, i)) {
                    g.collect(topic, i, out, seen);
                }
            }
        }
        match topic.get(at) {
            None => out.extend_from_slice(&self.subscribers),
            Some(head) => {
                if let Some(child) = self.literal.get(*head) {
                    child.collect(topic, at + 1, out, seen);
                }
                if let Some(star) = &self.star {
                    star.collect(topic, at + 1, out, seen);
                }
            }
        }
    }
}

/// Maximum number of topics whose routing result is cached.
const CACHE_LIMIT: usize = 8192;

/// Routes topics to subscriber ids.
///
/// Subscriber ids are small integers chosen by the caller. [`Router::route`]
/// returns the matching ids, without duplicates, in the order given by the
/// `rank` passed to [`Router::add`] (lowest first, then by id).
#[derive(Default)]
pub struct Router {
    exact: HashMap<Box<str>, Vec<usize>>,
    trie: Node,
    regexes: Vec<(usize, regex::Regex)>,
    rank: HashMap<usize, (u8, usize)>,
    cache: parking_lot::Mutex<HashMap<Box<str>, Arc<[usize]>>>,
    subscriptions: usize,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (subscriber, pattern) subscriptions held.
    pub fn len(&self) -> usize {
        self.subscriptions
    }

    /// True when nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Subscribes `id` to every pattern in `patterns` and to `regex` if given.
    /// `rank` orders ids in routing results (lower first).
    pub fn add(&mut self, id: usize, rank: u8, patterns: &[Pattern], regex: Option<regex::Regex>) {
        self.rank.insert(id, (rank, id));
        for p in patterns {
            if p.is_literal() {
                let ids = self.exact.entry(p.as_str().into()).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            } else {
                self.trie.insert(&p.segments, id);
            }
            self.subscriptions += 1;
        }
        if let Some(r) = regex {
            self.regexes.push((id, r));
            self.subscriptions += 1;
        }
        self.cache.get_mut().clear();
    }

    /// Removes every subscription of `id` (given the patterns it was added with).
    pub fn remove(&mut self, id: usize, patterns: &[Pattern]) {
        for p in patterns {
            if p.is_literal() {
                if let Some(ids) = self.exact.get_mut(p.as_str()) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.exact.remove(p.as_str());
                    }
                }
            } else {
                self.trie.remove(&p.segments, id);
            }
            self.subscriptions = self.subscriptions.saturating_sub(1);
        }
        let before = self.regexes.len();
        self.regexes.retain(|(i, _)| *i != id);
        self.subscriptions -= before - self.regexes.len();
        self.rank.remove(&id);
        self.cache.get_mut().clear();
    }

    /// The ids subscribed to `topic`, deduplicated and ordered by rank.
    pub fn route(&self, topic: &str) -> Arc<[usize]> {
        if let Some(hit) = self.cache.lock().get(topic) {
            return hit.clone();
        }
        let mut out = Vec::new();
        if let Some(ids) = self.exact.get(topic) {
            out.extend_from_slice(ids);
        }
        let parts: Vec<&str> = topic.split('.').collect();
        self.trie.collect(&parts, 0, &mut out, &mut HashSet::new());
        for (id, r) in &self.regexes {
            if r.is_match(topic) {
                out.push(*id);
            }
        }
        out.sort_unstable_by_key(|id| self.rank.get(id).copied().unwrap_or((u8::MAX, *id)));
        out.dedup();
        let result: Arc<[usize]> = out.into();
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(topic.into(), result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn documented_wildcards() {
        assert!(p("hook.*").matches("hook.response"));
        assert!(!p("hook.*").matches("hook.tool.usage"));
        assert!(!p("hook.*").matches("hook"));
        assert!(p("hook.**").matches("hook.tool.usage"));
        assert!(p("hook.**").matches("hook.a"));
        assert!(p("hook.**").matches("hook"));
        assert!(!p("hook.**").matches("hooks.a"));
        assert!(p("**").matches("anything.at.all"));
        assert!(p("a.**.b").matches("a.b"));
        assert!(p("a.**.b").matches("a.x.y.b"));
        assert!(!p("a.**.b").matches("a.x.y.c"));
        assert!(p("*.tool").matches("hook.tool"));
        assert!(p("hook.tool").matches("hook.tool"));
        assert!(!p("hook.tool").matches("hook.tools"));
    }

    #[test]
    fn invalid_inputs_name_the_problem() {
        for bad in ["", "a..b", ".a", "a.", "a.**b", "a*.b", "a b"] {
            let e = Pattern::parse(bad).unwrap_err();
            assert!(!e.reason.is_empty(), "{bad}");
        }
        assert!(Pattern::parse("a.**b")
            .unwrap_err()
            .reason
            .contains("wildcard mixed"));
        assert!(validate_topic("hook.*")
            .unwrap_err()
            .reason
            .contains("wildcards"));
        assert!(validate_topic("hook..x")
            .unwrap_err()
            .reason
            .contains("empty segment"));
        assert!(validate_topic("").unwrap_err().reason.contains("empty"));
        validate_topic("hook.subagent.start").unwrap();
    }

    /// Many `**` against a long topic: both matchers answer (polynomial, not
    /// exponential, in the number of `**`), and agree.
    #[test]
    fn many_globstars_against_a_long_topic() {
        let pattern = p(&format!("{}.x", ["**", "*"].repeat(12).join(".")));
        let miss = ["a"; 60].join(".");
        let hit = format!("{miss}.x");
        let mut r = Router::new();
        r.add(1, 0, std::slice::from_ref(&pattern), None);
        for (topic, want) in [(miss.as_str(), false), (hit.as_str(), true)] {
            assert_eq!(pattern.matches(topic), want, "{topic}");
            assert_eq!(r.route(topic).contains(&1), want, "{topic}");
        }
    }

    #[test]
    fn router_agrees_with_pattern_matching() {
        let patterns = [
            "hook.*",
            "hook.**",
            "**",
            "hook.tool",
            "system.**",
            "a.**.b",
            "*.x.*",
            "*",
            "a.*.**",
        ];
        let topics = [
            "hook",
            "hook.tool",
            "hook.tool.usage",
            "system",
            "a.b",
            "a.q.b",
            "z.x.y",
            "q",
            "a.b.c",
        ];
        let mut r = Router::new();
        for (i, pat) in patterns.iter().enumerate() {
            r.add(i, 0, &[p(pat)], None);
        }
        for t in topics {
            let expected: Vec<usize> = (0..patterns.len())
                .filter(|i| p(patterns[*i]).matches(t))
                .collect();
            assert_eq!(&*r.route(t), &expected[..], "topic {t}");
        }
        r.remove(2, &[p("**")]);
        assert!(!r.route("hook.tool").contains(&2));
    }

    #[test]
    fn rank_orders_results_and_regex_joins() {
        let mut r = Router::new();
        r.add(0, 3, &[p("hook.**")], None);
        r.add(1, 1, &[p("hook.tool")], None);
        r.add(2, 5, &[], Some(regex::Regex::new("^hook\\.t").unwrap()));
        assert_eq!(&*r.route("hook.tool"), &[1, 0, 2]);
        assert_eq!(&*r.route("hook.response"), &[0]);
    }

    /// A plain reference for the pattern language: `*` one segment, `**` zero or
    /// more, as a regex over the topic with a dot before every segment.
    fn reference(pattern: &str) -> regex::Regex {
        let mut re = String::from("^");
        for seg in pattern.split('.') {
            re.push_str(match seg {
                "*" => r"\.[^.]+",
                "**" => r"(?:\.[^.]+)*",
                lit => {
                    re.push_str(r"\.");
                    re.push_str(&regex::escape(lit));
                    continue;
                }
            });
        }
        re.push('$');
        regex::Regex::new(&re).unwrap()
    }

    fn random_path(rng: &mut fastrand::Rng, words: &[&str]) -> String {
        let n = rng.usize(1..=4);
        (0..n)
            .map(|_| words[rng.usize(..words.len())])
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn the_trie_routes_like_the_reference_on_random_patterns() {
        let topics_words = ["a", "b", "c"];
        let pattern_words = ["a", "b", "c", "*", "**"];
        for seed in 0..100u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let patterns: Vec<String> = (0..rng.usize(1..12))
                .map(|_| random_path(&mut rng, &pattern_words))
                .collect();
            let mut r = Router::new();
            // NOTE: one id may hold several patterns; ids are ranked in reverse to
            // check the ordering by rank as well.
            let ids: Vec<usize> = patterns.iter().map(|_| rng.usize(0..6)).collect();
            let mut by_id: HashMap<usize, Vec<Pattern>> = HashMap::new();
            for (pat, id) in patterns.iter().zip(&ids) {
                by_id.entry(*id).or_default().push(p(pat));
            }
            for (id, pats) in &by_id {
                r.add(*id, (10 - *id) as u8, pats, None);
            }
            let removed = rng.usize(0..6);
            if let Some(pats) = by_id.remove(&removed) {
                r.remove(removed, &pats);
            }
            let refs: Vec<(usize, Vec<regex::Regex>)> = by_id
                .iter()
                .map(|(id, pats)| (*id, pats.iter().map(|q| reference(q.as_str())).collect()))
                .collect();
            for _ in 0..40 {
                let topic = random_path(&mut rng, &topics_words);
                let dotted = format!(".{topic}");
                let mut want: Vec<usize> = refs
                    .iter()
                    .filter(|(_, res)| res.iter().any(|re| re.is_match(&dotted)))
                    .map(|(id, _)| *id)
                    .collect();
                want.sort_by_key(|id| (10 - *id, *id));
                assert_eq!(
                    &*r.route(&topic),
                    &want[..],
                    "seed {seed}, topic {topic}, patterns {patterns:?} ids {ids:?}"
                );
            }
        }
    }
}
