//! What an HTTP answer means for the events it carried: delivered, worth
//! another try (and no sooner than when), or rejected for good.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured; a longer one is cut to this.
// NOTE: a server asking for hours would otherwise hold the events in memory
// that long; the bus's stop() fires waiting retries at once in any case.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How many characters of a response body a failure message quotes.
pub const EXCERPT_CHARS: usize = 200;

/// What a status code means for the events of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 408, 429, 5xx: the server may take it later; retried with backoff.
    Retry,
    /// Every other status (other 4xx; 1xx and 3xx, as redirects are not
    /// followed): trying again cannot help; dead-lettered at once.
    Permanent,
}

/// The verdict for `status`.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    }
}

/// The status class a metric counts it under: `responses_2xx` ... `responses_5xx`
/// (index 0 to 3), None for anything else.
pub fn class_index(status: u16) -> Option<usize> {
    match status {
        200..=299 => Some(0),
        300..=399 => Some(1),
        400..=499 => Some(2),
        500..=599 => Some(3),
        _ => None,
    }
}

/// The delay a `Retry-After` value asks for at `now`: delta-seconds or an
/// HTTP date (a date in the past asks for none); None if it is neither.
/// Capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // NOTE: digits only (RFC 9110 delta-seconds); too many digits means "very long".
        Duration::from_secs(
            value
                .parse::<u64>()
                .unwrap_or(u64::MAX)
                .min(MAX_RETRY_AFTER.as_secs()),
        )
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The first [`EXCERPT_CHARS`] characters of a body, whitespace runs folded
/// into one space, `…` when cut; lossy for bytes that are not UTF-8.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut n = 0;
    for word in text.split_whitespace() {
        if n > 0 {
            out.push(' ');
            n += 1;
        }
        for c in word.chars() {
            if n == EXCERPT_CHARS {
                out.push('…');
                return out;
            }
            out.push(c);
            n += 1;
        }
    }
    out
}

/// The failure message of an answer: `HTTP 400 Bad Request from <url>: <excerpt>`.
pub fn describe(status: u16, reason: Option<&str>, url: &str, body: &[u8]) -> String {
    let mut s = format!("HTTP {status}");
    if let Some(r) = reason {
        s.push(' ');
        s.push_str(r);
    }
    s.push_str(" from ");
    s.push_str(url);
    let ex = excerpt(body);
    if !ex.is_empty() {
        s.push_str(": ");
        s.push_str(&ex);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_delivered_retried_or_permanent() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(s), Verdict::Delivered, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(s), Verdict::Retry, "{s}");
        }
        for s in [
            100, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 422, 499,
        ] {
            assert_eq!(classify(s), Verdict::Permanent, "{s}");
        }
        assert_eq!(class_index(204), Some(0));
        assert_eq!(class_index(302), Some(1));
        assert_eq!(class_index(429), Some(2));
        assert_eq!(class_index(503), Some(3));
        assert_eq!(class_index(101), None);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 02 Dec 2026 01:00:00 GMT").unwrap();
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 01:00:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 00:59:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after("-1", now), None);
        assert_eq!(retry_after("1.5", now), None);
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("", now), None);
    }

    #[test]
    fn excerpts_fold_whitespace_and_cut() {
        assert_eq!(excerpt(b"  bad \n\t request  "), "bad request");
        let long = "x".repeat(500);
        let ex = excerpt(long.as_bytes());
        assert_eq!(ex.chars().count(), EXCERPT_CHARS + 1);
        assert!(ex.ends_with('…'));
        assert_eq!(excerpt(b"\xff ok"), "\u{fffd} ok");
        assert_eq!(
            describe(
                400,
                Some("Bad Request"),
                "http://h/api",
                b"{\"error\": \"no\"}"
            ),
            "HTTP 400 Bad Request from http://h/api: {\"error\": \"no\"}"
        );
        assert_eq!(
            describe(503, None, "http://h/", b""),
            "HTTP 503 from http://h/"
        );
    }
}
