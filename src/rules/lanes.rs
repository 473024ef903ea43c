//! [`LaneRules`]: the rules of the consumers on one route, compiled into one
//! [`RuleSet`], answering which of the route's lanes take an event.

use serde_json::Map;

use super::{EventDoc, Projection, Rule, RuleSet, EVENT_FIELDS};
use crate::event::EventView;

/// The rules of a route's lanes, matched together.
#[derive(Debug, Clone)]
pub struct LaneRules {
    set: RuleSet,
    /// The lane (its position on the route) of each rule.
    lane_of: Vec<usize>,
    /// Lanes with no rule: they take every event.
    open: Vec<usize>,
    /// The event fields some rule names (the only ones copied into the document).
    fields: Vec<&'static str>,
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
        let fields = EVENT_FIELDS
            .into_iter()
            .filter(|k| set.names_field(k))
            .collect();
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

    /// One flag per lane of the route (`lanes` of them): whether it takes the
    /// event whose fields `view` holds (an event without a view is matched as
    /// an empty document).
    pub fn admitted(&self, view: Option<&EventView>, lanes: usize) -> Vec<bool> {
        let mut flags = vec![false; lanes];
        for &i in &self.open {
            flags[i] = true;
        }
        let mut hits = Vec::new();
        match view {
            Some(v) => {
                let doc = EventDoc::of(v, |k| self.fields.contains(&k));
                self.set.matching_doc(&doc, &mut hits);
            }
            None => self.set.matching_doc(&Map::new(), &mut hits),
        }
        for r in hits {
            flags[self.lane_of[r]] = true;
        }
        flags
    }
}
