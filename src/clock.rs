//! The wall clock as the publish and delivery paths read it.
//!
//! `chrono::Utc::now()` works out the calendar date on every call (about 190
//! instructions with the clock read; five times per event on the producer's path
//! before issue 16). Here the clock is read once as nanoseconds, and a
//! [`DateTime`] is made from them with the day's date remembered per thread, so
//! the calendar is worked out once a day per thread.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

thread_local! {
    /// The last day (since the Unix epoch) converted on this thread, and its date.
    static DAY: Cell<(i64, Option<NaiveDate>)> = const { Cell::new((i64::MIN, None)) };
}

const NANOS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Now, in nanoseconds since the Unix epoch (saturating outside 1677..2262, as
/// `chrono`'s `timestamp_nanos_opt` would fail there).
pub fn now_unix_nanos() -> i64 {
    // NOTE: clock_gettime straight into nanoseconds: std's SystemTime::now() and
    // duration_since(UNIX_EPOCH) normalise through Timespec arithmetic, ~150 of the
    // ~250 instructions a reading cost (two readings per producer event, issue 16).
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_REALTIME always exists.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } == 0 {
            // NOTE: time_t and c_long are i64 here but i32 on some 32-bit targets.
            #[allow(clippy::useless_conversion)]
            return i64::from(ts.tv_sec)
                .checked_mul(NANOS_PER_SEC)
                .and_then(|ns| ns.checked_add(i64::from(ts.tv_nsec)))
                .unwrap_or(if ts.tv_sec < 0 { i64::MIN } else { i64::MAX });
        }
    }
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Now, in microseconds since the Unix epoch (no calendar work at all).
pub fn now_unix_micros() -> i64 {
    now_unix_nanos().div_euclid(1_000)
}

/// Now, as `chrono::Utc::now()` gives it.
pub fn now() -> DateTime<Utc> {
    from_unix_nanos(now_unix_nanos())
}

/// The instant `ns` nanoseconds after the Unix epoch; equal to
/// `DateTime::from_timestamp_nanos(ns)`.
pub fn from_unix_nanos(ns: i64) -> DateTime<Utc> {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let nanos = ns.rem_euclid(NANOS_PER_SEC) as u32;
    let day = secs.div_euclid(SECS_PER_DAY);
    let of_day = secs.rem_euclid(SECS_PER_DAY) as u32;
    let date = DAY.with(|cell| match cell.get() {
        (d, Some(date)) if d == day => Some(date),
        _ => {
            let date = DateTime::from_timestamp(day * SECS_PER_DAY, 0).map(|t| t.date_naive());
            if date.is_some() {
                cell.set((day, date));
            }
            date
        }
    });
    date.zip(NaiveTime::from_num_seconds_from_midnight_opt(of_day, nanos))
        .map(|(d, t)| d.and_time(t).and_utc())
        .unwrap_or_else(|| DateTime::from_timestamp_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_chrono_across_days_and_the_epoch() {
        let samples = [
            0,
            1,
            -1,
            NANOS_PER_SEC - 1,
            SECS_PER_DAY * NANOS_PER_SEC - 1,
            SECS_PER_DAY * NANOS_PER_SEC,
            -SECS_PER_DAY * NANOS_PER_SEC,
            -SECS_PER_DAY * NANOS_PER_SEC - 1,
            1_764_979_200_123_456_789,
            1_764_979_199_999_999_999,
            951_782_400_000_000_000, // 2000-02-29
            i64::MAX,
            i64::MIN,
        ];
        // NOTE: twice, so the second pass reads the remembered day of the one before.
        for ns in samples.iter().chain(samples.iter()) {
            assert_eq!(
                from_unix_nanos(*ns),
                DateTime::from_timestamp_nanos(*ns),
                "{ns}"
            );
        }
        let mut ns = 1_700_000_000_000_000_000i64;
        for _ in 0..2_000 {
            assert_eq!(
                from_unix_nanos(ns),
                DateTime::from_timestamp_nanos(ns),
                "{ns}"
            );
            ns += 3_600 * NANOS_PER_SEC + 7;
        }
    }

    #[test]
    fn now_is_the_system_clock() {
        let before = Utc::now();
        let ours = now();
        let after = Utc::now();
        assert!(before <= ours && ours <= after, "{before} {ours} {after}");
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i64;
        let ours = now_unix_nanos();
        assert!((ours - system).abs() < 1_000_000_000, "{ours} {system}");
        let micros = now_unix_micros();
        assert!(micros >= after.timestamp_micros());
        assert!(micros - after.timestamp_micros() < 60_000_000);
    }
}
