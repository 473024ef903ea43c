//! Stored payload decoding (the store's and the shared log's LZ4 rows): never
//! panics, never allocates more than the input can hold, round-trips what it encodes.
#![no_main]

use _core::storage::{decode_payload, decompress_lz4, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = decompress_lz4(data) {
        assert!(out.len() <= data.len() * 256 + 64);
    }
    let _ = decode_payload(Codec::Lz4, data.to_vec());
    let packed = lz4_roundtrip(data);
    assert_eq!(packed.as_deref(), Ok(data));
});

fn lz4_roundtrip(data: &[u8]) -> Result<Vec<u8>, String> {
    let (codec, stored) = _core::storage::encode_payload(data.to_vec(), 0);
    decode_payload(codec, stored)
}
