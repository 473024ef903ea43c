//! Topic and pattern parsing, and matching: never panics; the trie router and a
//! pattern's own matcher agree on every parsed pair.
#![no_main]

use _core::topic::{validate_topic, Pattern, Router};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // "pattern\ntopic" (or the same text for both).
    let (pattern, topic) = text.split_once('\n').unwrap_or((text, text));
    let parsed = Pattern::parse(pattern);
    if validate_topic(topic).is_err() {
        return;
    }
    if let Ok(p) = parsed {
        let mut r = Router::new();
        r.add(7, 0, std::slice::from_ref(&p), None);
        let routed = r.route(topic).contains(&7);
        assert_eq!(routed, p.matches(topic), "pattern {pattern:?} topic {topic:?}");
    }
});
