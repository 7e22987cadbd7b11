//! HTTP dates and the validators of conditional requests.

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// (year, month 1-12, day) of a day count since 1970-01-01 (Howard Hinnant's
/// civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as an HTTP date (IMF-fixdate): `Tue, 01 Dec 2026 16:19:05 GMT`.
pub fn http_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[month as usize - 1],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// An IMF-fixdate as Unix seconds; other forms (which senders no longer use)
/// and nonsense are `None`, which makes a conditional request unconditional.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let mut parts = text.split(' ');
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || zone != "GMT" || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let year: i64 = year.parse().ok()?;
    let mut hms = time
        .split(':')
        .map(|p| (p.len() == 2).then(|| p.parse::<u64>().ok()).flatten());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + s)
}

/// A file's validators: a strong entity tag from its size and modification
/// time, and its modification time in seconds.
pub fn validators(size: u64, mtime: (i64, u32)) -> (String, u64) {
    (
        format!("\"{size:x}-{:x}-{:x}\"", mtime.0, mtime.1),
        u64::try_from(mtime.0).unwrap_or(0),
    )
}

/// Whether a GET or HEAD with these request headers gets `304 Not Modified`
/// for a file with entity tag `etag` modified at `modified` (RFC 9110 13.2.2:
/// If-None-Match, when present, decides alone).
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: &str,
    modified: u64,
) -> bool {
    if let Some(tags) = if_none_match {
        let weak_eq = |t: &str| t.trim().trim_start_matches("W/") == etag.trim_start_matches("W/");
        return tags.trim() == "*" || tags.split(',').any(weak_eq);
    }
    if_modified_since
        .and_then(parse_http_date)
        .is_some_and(|since| modified <= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdates_both_ways() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_825_600), "Tue, 29 Feb 2000 12:00:00 GMT");
        assert_eq!(http_date(1_796_142_545), "Tue, 01 Dec 2026 16:29:05 GMT");
        for secs in [0, 784_111_777, 951_825_600, 1_796_142_545, 4_102_444_799] {
            assert_eq!(parse_http_date(&http_date(secs)), Some(secs), "{secs}");
        }
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn conditional_requests_match_tags_then_dates() {
        let (etag, modified) = validators(4096, (1_796_142_545, 7));
        assert_eq!(etag, "\"1000-6b0ef5d1-7\"");
        let date = http_date(modified);
        assert!(not_modified(Some(&etag), None, &etag, modified));
        assert!(not_modified(
            Some(&format!("\"x\", W/{etag}")),
            None,
            &etag,
            modified
        ));
        assert!(not_modified(Some("*"), None, &etag, modified));
        // A tag that does not match decides, whatever the date says.
        assert!(!not_modified(
            Some("\"other\""),
            Some(&date),
            &etag,
            modified
        ));
        assert!(not_modified(None, Some(&date), &etag, modified));
        assert!(!not_modified(
            None,
            Some(&http_date(modified - 1)),
            &etag,
            modified
        ));
        assert!(!not_modified(None, Some("yesterday"), &etag, modified));
        assert!(!not_modified(None, None, &etag, modified));
    }
}
