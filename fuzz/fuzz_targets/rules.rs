//! Rule compilation and matching on arbitrary JSON: never panics.
#![no_main]

use _core::rules::Rule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // "rule JSON\ndocument JSON"
    let (rule, doc) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let Ok(rule) = serde_json::from_slice::<serde_json::Value>(rule) else {
        return;
    };
    let doc = serde_json::from_slice::<serde_json::Value>(doc).unwrap_or_default();
    if let Ok(r) = Rule::compile(&rule) {
        let _ = r.matches(&doc);
        let _ = r.matches(&rule);
    }
});
