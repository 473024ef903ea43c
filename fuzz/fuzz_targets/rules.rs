//! Rule compilation and matching on arbitrary JSON: never panics, and the
//! combined matcher (`RuleSet`) matches exactly what each rule alone does.
#![no_main]

use _core::rules::{Rule, RuleSet};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // "rule JSON\ndocument JSON": the rule line may also be a JSON array of
    // rules, matched together and alone against the document.
    let (rule, doc) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let Ok(rule) = serde_json::from_slice::<Value>(rule) else {
        return;
    };
    let doc = serde_json::from_slice::<Value>(doc).unwrap_or_default();
    let candidates = match &rule {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    let rules: Vec<Rule> = candidates
        .iter()
        .filter_map(|r| Rule::compile(r).ok())
        .collect();
    let mut set = RuleSet::default();
    for r in &rules {
        set.add(r.clone());
    }
    for d in [&doc, &rule] {
        let alone: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches(d))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(set.matching(d), alone, "rules {rule}, document {d}");
    }
});
