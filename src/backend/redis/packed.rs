//! One stream entry's record as a single binary field `r` (the packed layout).
//!
//! Until this layout, every entry was ten fields (`e`, `t`, `p`, `ts`, `pb`, `ps`, `c`,
//! `d`, `m`, `z`): ten field names and ten values for Redis to parse, store in the
//! stream's listpack and send back on every read. One field holds the same record in
//! fewer bytes and one value. Readers still read both layouts (an entry without `r`
//! is the multi-field one written by an older version), see `super::RedisLog`.
//!
//! Version 1, all integers little-endian:
//!
//! | bytes | holds |
//! | --- | --- |
//! | 1 | version, `1` |
//! | 1 | payload codec: 0 raw, 1 LZ4 size-prepended |
//! | 1 | priority |
//! | 8 | event time, unix µs (i64) |
//! | 8 | the publisher's counter (u64) |
//! | 4 | stored size (u32): metadata + stored payload bytes, what `bytes` counts |
//! | varint + bytes | event id, topic, publisher, metadata (each a LEB128 length, then the bytes) |
//! | rest | the (possibly compressed) payload |
//!
//! NOTE: the stored size sits at a fixed offset (bytes 20..23 counted from 1) so the
//! Lua scripts (`scripts.rs`: append, trim, replay) read it with `string.byte`
//! without parsing the rest; the reader checks it against what it parsed.
//!
//! NOTE: `src/backend/codec.rs` converts events to and from [`Record`]s (the metadata
//! JSON); this module only lays a `Record` out in bytes, so the two compose: codec.rs
//! makes the record, this packs it.

use crate::backend::Record;

/// The layout version this code writes (and the only one it reads).
pub(super) const VERSION: u8 = 1;

/// Payload codec: stored as is.
pub(super) const RAW: u8 = 0;
/// Payload codec: LZ4, size-prepended (`lz4_flex::compress_prepend_size`).
pub(super) const LZ4: u8 = 1;

const FIXED: usize = 1 + 1 + 1 + 8 + 8 + 4;

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len());
    out.extend_from_slice(b);
}

/// How many bytes [`write`] adds for `r` with a stored payload of `payload_len` bytes
/// (so a caller can write the RESP length before the bytes).
pub(super) fn packed_len(r: &Record, payload_len: usize) -> usize {
    let field = |n: usize| varint_len(n) + n;
    FIXED
        + field(r.event_id.len())
        + field(r.topic.len())
        + field(r.publisher.len())
        + field(r.metadata.len())
        + payload_len
}

/// Append `r` packed to `out`, with `payload` (already encoded with `codec`) in
/// place of `r.payload`. Writes exactly [`packed_len`] bytes.
pub(super) fn write(out: &mut Vec<u8>, r: &Record, codec: u8, payload: &[u8]) {
    out.push(VERSION);
    out.push(codec);
    out.push(r.priority);
    out.extend_from_slice(&r.timestamp_us.to_le_bytes());
    out.extend_from_slice(&r.publisher_seq.to_le_bytes());
    let stored = (r.metadata.len() + payload.len()).min(u32::MAX as usize) as u32;
    out.extend_from_slice(&stored.to_le_bytes());
    put_bytes(out, r.event_id.as_bytes());
    put_bytes(out, r.topic.as_bytes());
    put_bytes(out, r.publisher.as_bytes());
    put_bytes(out, &r.metadata);
    out.extend_from_slice(payload);
}

/// A packed record read in place (nothing copied, the payload not decompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Packed<'a> {
    pub codec: u8,
    pub priority: u8,
    pub timestamp_us: i64,
    pub publisher_seq: u64,
    pub event_id: &'a str,
    pub topic: &'a str,
    pub publisher: &'a str,
    pub metadata: &'a [u8],
    /// As stored (see `codec`).
    pub payload: &'a [u8],
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("packed record cut short in its {what}"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn varint(&mut self, what: &str) -> Result<usize, String> {
        let mut n: usize = 0;
        for shift in (0..usize::BITS).step_by(7) {
            let byte = *self.take(1, what)?.first().unwrap_or(&0);
            n |= ((byte & 0x7f) as usize) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(format!(
            "packed record: the length of its {what} is too long"
        ))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.varint(what)?;
        self.take(n, what)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes(what)?)
            .map_err(|_| format!("packed record: its {what} is not UTF-8"))
    }
}

/// Read a packed record (an error saying what is wrong with it otherwise).
pub(super) fn read(b: &[u8]) -> Result<Packed<'_>, String> {
    let mut c = Cursor { b };
    let fixed = c.take(FIXED, "header")?;
    if fixed[0] != VERSION {
        return Err(format!(
            "packed record of layout version {} (this version reads {VERSION})",
            fixed[0]
        ));
    }
    let le8 = |s: &[u8]| -> [u8; 8] { s.try_into().unwrap_or([0; 8]) };
    let le4 = |s: &[u8]| -> [u8; 4] { s.try_into().unwrap_or([0; 4]) };
    let p = Packed {
        codec: fixed[1],
        priority: fixed[2],
        timestamp_us: i64::from_le_bytes(le8(&fixed[3..11])),
        publisher_seq: u64::from_le_bytes(le8(&fixed[11..19])),
        event_id: c.text("event id")?,
        topic: c.text("topic")?,
        publisher: c.text("publisher")?,
        metadata: c.bytes("metadata")?,
        payload: c.b,
    };
    let stored = u32::from_le_bytes(le4(&fixed[19..23])) as usize;
    if stored != p.stored_size() {
        return Err(format!(
            "packed record says {stored} stored bytes, holds {}",
            p.stored_size()
        ));
    }
    Ok(p)
}

impl Packed<'_> {
    /// Metadata plus stored payload bytes (what the meta hash's `bytes` counts).
    pub(super) fn stored_size(&self) -> usize {
        self.metadata.len() + self.payload.len()
    }

    /// The record, its payload decompressed.
    pub(super) fn record(&self) -> Result<Record, String> {
        let payload = match self.codec {
            RAW => self.payload.to_vec(),
            LZ4 => crate::storage::decompress_lz4(self.payload)?,
            other => return Err(format!("unknown payload codec {other}")),
        };
        Ok(Record {
            event_id: self.event_id.to_string(),
            topic: self.topic.to_string(),
            priority: self.priority,
            timestamp_us: self.timestamp_us,
            publisher: self.publisher.to_string(),
            publisher_seq: self.publisher_seq,
            payload,
            metadata: self.metadata.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(payload: &[u8], metadata: &[u8]) -> Record {
        Record {
            event_id: "e-ü-1".into(),
            topic: "hook.pre_tool".into(),
            priority: 2,
            timestamp_us: -5,
            publisher: "host:1:abc".into(),
            publisher_seq: u64::MAX,
            payload: payload.to_vec(),
            metadata: metadata.to_vec(),
        }
    }

    #[test]
    fn round_trips_and_writes_exactly_its_length() {
        let long = vec![b'x'; 300];
        for (p, m) in [(&b"{}"[..], &b""[..]), (&long[..], &br#"{"type":"T"}"#[..])] {
            let r = rec(p, m);
            let mut out = b"prefix".to_vec();
            write(&mut out, &r, RAW, &r.payload);
            assert_eq!(out.len() - 6, packed_len(&r, r.payload.len()));
            let back = read(&out[6..]).unwrap();
            assert_eq!(back.record().unwrap(), r);
        }
        let big = vec![b'a'; 10_000];
        let r = rec(&big, b"{}");
        let z = lz4_flex::compress_prepend_size(&big);
        let mut out = Vec::new();
        write(&mut out, &r, LZ4, &z);
        assert!(out.len() < 200, "{}", out.len());
        assert_eq!(read(&out).unwrap().record().unwrap(), r);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let r = rec(b"{\"a\":1}", b"{}");
        let mut good = Vec::new();
        write(&mut good, &r, RAW, &r.payload);
        // Every prefix short of the payload is cut short; none panics.
        for n in 0..good.len() {
            let _ = read(&good[..n]);
        }
        assert!(read(&good[..10]).unwrap_err().contains("header"));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(read(&v2).unwrap_err().contains("version 2"));
        let mut codec = good.clone();
        codec[1] = 9;
        assert!(read(&codec)
            .unwrap()
            .record()
            .unwrap_err()
            .contains("codec 9"));
        let mut size = good.clone();
        size[19] ^= 1;
        assert!(read(&size).unwrap_err().contains("stored bytes"));
        assert_eq!(read(&good).unwrap().stored_size(), 2 + r.payload.len());
        let mut huge = good[..FIXED].to_vec();
        huge.extend_from_slice(&[0xff; 12]);
        assert!(read(&huge).is_err());
    }
}
