//! The Socket.IO client's packet and URL parsing: never panics.
#![no_main]

use _core::sinks::socketio::{parse_ack, ws_url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_ack(text, "");
    let _ = parse_ack(text, "/ns,");
    if let Some(rest) = text.strip_prefix('4') {
        let _ = parse_ack(rest, "");
    }
    let _ = ws_url(text);
});
