//! [`LaneRules`]: the rules of the consumers on one route, compiled into one
//! [`RuleSet`], answering which of the route's lanes take an event.

use serde_json::Map;

use super::doc::field_mask;
use super::{Doc, EventDoc, Projection, Rule, RuleSet, EVENT_FIELDS};
use crate::event::EventView;

/// One bit per entry of [`EVENT_FIELDS`] that `keys` names.
pub fn field_bits(keys: &[&str]) -> u8 {
    field_mask(|k| keys.contains(&k))
}

thread_local! {
    /// [`LaneRules::admitted_doc`]'s buffer of matching rules, reused by the thread.
    static HITS: std::cell::Cell<Vec<usize>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The rules of a route's lanes, matched together.
#[derive(Debug, Clone)]
pub struct LaneRules {
    set: RuleSet,
    /// The lane (its position on the route) of each rule.
    lane_of: Vec<usize>,
    /// Lanes with no rule: they take every event.
    open: Vec<usize>,
    /// The event fields some rule names (the only ones copied into the
    /// document), one bit per entry of [`EVENT_FIELDS`].
    fields: u8,
    /// What the rules read of the payload (None when no rule names `data`).
    data: Option<Projection>,
}

impl LaneRules {
    /// The rules of a route's lanes, in route order; None when no lane has one.
    pub fn of<'a>(rules: impl Iterator<Item = Option<&'a Rule>>) -> Option<LaneRules> {
        let mut set = RuleSet::default();
        let mut lane_of = Vec::new();
        let mut open = Vec::new();
        let mut all = Vec::new();
        for (i, rule) in rules.enumerate() {
            match rule {
                Some(r) => {
                    set.add(r.clone());
                    all.push(r);
                    lane_of.push(i);
                }
                None => open.push(i),
            }
        }
        let data = Projection::of_field("data", all);
        if set.is_empty() {
            return None;
        }
        let fields = field_mask(|k| set.names_field(k));
        Some(LaneRules {
            set,
            lane_of,
            open,
            fields,
            data,
        })
    }

    /// What the rules read of the payload: a view whose `data` is the payload
    /// cut down to it ([`Projection::project`]) is matched exactly as one with
    /// the whole payload. None when no rule names `data`.
    pub fn data_projection(&self) -> Option<&Projection> {
        self.data.as_ref()
    }

    /// Whether the rules name no event field outside `bits` ([`field_bits`]; a
    /// caller that can make those fields cheaply matches with
    /// [`LaneRules::admitted_doc`]).
    pub fn names_within(&self, bits: u8) -> bool {
        self.fields & !bits == 0
    }

    /// Whether some rule names the event field `key`.
    pub fn names(&self, key: &str) -> bool {
        EVENT_FIELDS
            .iter()
            .position(|k| *k == key)
            .is_some_and(|i| self.fields & (1 << i) != 0)
    }

    /// One flag per lane of the route (`lanes` of them): whether it takes the
    /// event whose fields `view` holds (an event without a view is matched as
    /// an empty document).
    pub fn admitted(&self, view: Option<&EventView>, lanes: usize) -> Vec<bool> {
        match view {
            Some(v) => self.admitted_doc(&EventDoc::with_fields(v, self.fields), lanes),
            None => self.admitted_doc(&Map::new(), lanes),
        }
    }

    /// [`LaneRules::admitted`] for an event given as its document (at least the
    /// fields the rules name, see [`LaneRules::names`]).
    pub fn admitted_doc<D: Doc + ?Sized>(&self, doc: &D, lanes: usize) -> Vec<bool> {
        let mut flags = vec![false; lanes];
        for &i in &self.open {
            flags[i] = true;
        }
        // NOTE: the thread's buffer, as in `RuleSet::matching_doc`.
        let mut hits = HITS.with(|h| h.take());
        self.set.matching_doc(doc, &mut hits);
        for &r in &hits {
            flags[self.lane_of[r]] = true;
        }
        HITS.with(|h| h.set(hits));
        flags
    }
}
