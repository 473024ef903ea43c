//! Payload compression. Payloads larger than `compress_threshold` are stored LZ4
//! compressed (block format with the uncompressed size prepended) when that actually
//! makes them smaller; the `codec` column says which form a row holds.

/// How a stored payload is encoded. The numeric value is what the `codec` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Raw JSON bytes.
    None = 0,
    /// `lz4_flex::compress_prepend_size` of the JSON bytes.
    Lz4 = 1,
}

impl Codec {
    /// Parse the `codec` column.
    pub fn from_column(v: i64) -> Option<Codec> {
        match v {
            0 => Some(Codec::None),
            1 => Some(Codec::Lz4),
            _ => None,
        }
    }
}

/// Encode `data` for storage: compressed if it is above `threshold` bytes and
/// compression saves space, raw otherwise.
pub fn encode(data: Vec<u8>, threshold: usize) -> (Codec, Vec<u8>) {
    if data.len() > threshold {
        let packed = lz4_flex::compress_prepend_size(&data);
        if packed.len() < data.len() {
            return (Codec::Lz4, packed);
        }
    }
    (Codec::None, data)
}

/// Decode a stored payload back to the raw JSON bytes.
pub fn decode(codec: Codec, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    match codec {
        Codec::None => Ok(stored),
        Codec::Lz4 => decompress_lz4(&stored),
    }
}

/// More than an LZ4 block can expand: each input byte of a length run adds at most
/// 255 output bytes.
const LZ4_MAX_RATIO: usize = 256;

/// `lz4_flex::decompress_size_prepended`, refusing a declared size the input
/// cannot hold.
///
/// NOTE: lz4_flex allocates the declared size before decoding; a corrupt row
/// declaring 4 GiB would allocate 4 GiB. A block of `n` bytes decodes to at most
/// about `255 * n` bytes, so a larger claim is corruption.
pub fn decompress_lz4(stored: &[u8]) -> Result<Vec<u8>, String> {
    let Some(head) = stored.get(..4) else {
        return Err("compressed payload shorter than its size header".into());
    };
    let declared = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
    let body = stored.len() - 4;
    if declared > body.saturating_mul(LZ4_MAX_RATIO).saturating_add(64) {
        return Err(format!(
            "compressed payload claims {declared} bytes from {body}: corrupt"
        ));
    }
    lz4_flex::decompress_size_prepended(stored).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payload_stays_raw() {
        let (c, b) = encode(b"{\"a\":1}".to_vec(), 4096);
        assert_eq!(c, Codec::None);
        assert_eq!(b, b"{\"a\":1}");
    }

    #[test]
    fn large_payload_round_trips_compressed() {
        let data = format!("{{\"text\":\"{}\"}}", "abc".repeat(5000)).into_bytes();
        let (c, b) = encode(data.clone(), 4096);
        assert_eq!(c, Codec::Lz4);
        assert!(b.len() < data.len());
        assert_eq!(decode(c, b).unwrap(), data);
    }

    #[test]
    fn the_most_compressible_payload_still_decodes() {
        let data = vec![b'0'; 10 << 20];
        let (c, b) = encode(data.clone(), 16);
        assert_eq!(c, Codec::Lz4);
        assert_eq!(decode(c, b).unwrap(), data);
    }

    #[test]
    fn a_corrupt_size_header_is_refused_before_allocating() {
        let mut forged = u32::MAX.to_le_bytes().to_vec();
        forged.extend_from_slice(&[0x10, b'x']);
        let e = decompress_lz4(&forged).unwrap_err();
        assert!(e.contains("claims 4294967295 bytes from 2"), "{e}");
        assert!(decompress_lz4(&[1, 2]).unwrap_err().contains("shorter"));
    }

    #[test]
    fn incompressible_payload_stays_raw() {
        let mut rng = fastrand::Rng::with_seed(7);
        let data: Vec<u8> = (0..10_000).map(|_| rng.u8(..)).collect();
        let (c, _) = encode(data.clone(), 16);
        assert_eq!(c, Codec::None);
    }
}
