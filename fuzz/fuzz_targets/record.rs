//! Decoding a shared-log record's metadata: never panics.
#![no_main]

use _core::backend::codec::stored_from_record;
use _core::backend::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = Record {
        event_id: "e".into(),
        topic: "a.b".into(),
        priority: 3,
        timestamp_us: 0,
        publisher: "p".into(),
        publisher_seq: 1,
        payload: Vec::new(),
        metadata: data.to_vec(),
    };
    let _ = stored_from_record(&r);
});
