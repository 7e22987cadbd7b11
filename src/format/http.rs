//! HTTP/1.x request heads and byte ranges, parsed from bytes a client sent, and
//! response heads and chunk sizes, parsed from bytes a server (or a proxy)
//! sent, with every size bounded before anything is kept: readers take at most
//! [`MAX_HEAD`] bytes of a head and hand them here.

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 << 10;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("malformed request line")]
    BadRequestLine,
    #[error("malformed header line")]
    BadHeader,
    #[error("unsupported HTTP version")]
    Version,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("request bodies in chunked transfer coding are not accepted")]
    Chunked,
    #[error("malformed status line")]
    BadStatusLine,
    #[error("malformed chunk size")]
    BadChunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The request target as sent (`/path?query`).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Declared body length (0 when absent).
    pub content_length: u64,
}

/// The value of header `name` (lower case) among `headers`.
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether `Connection:` and the version leave the connection open.
fn connection_open(headers: &[(String, String)], minor: u8) -> bool {
    let connection = find_header(headers, "connection")
        .unwrap_or("")
        .to_ascii_lowercase();
    let says = |token: &str| connection.split(',').any(|t| t.trim() == token);
    if minor == 0 {
        says("keep-alive")
    } else {
        !says("close")
    }
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the client asked to keep the connection open after this request.
    pub fn keep_alive(&self) -> bool {
        connection_open(&self.headers, self.minor)
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }

    /// The value of `key` in the target's query string, taken as it is.
    pub fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Where a complete head ends in `buf` (just past the blank line), if it does.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a complete request head (as [`head_end`] delimits it).
pub fn parse_head(head: &[u8]) -> Result<RequestHead, HttpError> {
    if head.len() > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| HttpError::BadHeader)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::BadRequestLine);
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(HttpError::Version),
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Method::Other,
        _ => return Err(HttpError::BadRequestLine),
    };
    let headers = header_lines(lines)?;
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(HttpError::Chunked);
    }
    Ok(RequestHead {
        method,
        target: target.to_string(),
        minor,
        content_length: content_length(&headers)?.unwrap_or(0),
        headers,
    })
}

/// Header lines up to the blank one: names in lower case, values trimmed.
fn header_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let (name, value) = line.split_once(':').ok_or(HttpError::BadHeader)?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(HttpError::BadHeader);
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::BadHeader);
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(headers)
}

/// The declared Content-Length, if any; two different ones are an error (a
/// smuggling attempt or a bug).
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    let mut length = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        let n = value
            .parse::<u64>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(HttpError::BadLength)?;
        if length.is_some_and(|c| c != n) {
            return Err(HttpError::BadLength);
        }
        length = Some(n);
    }
    Ok(length)
}

/// How a response's body ends (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, 1xx, 204 or 304.
    Empty,
    Length(u64),
    /// Chunked transfer coding: chunk sizes read with [`parse_chunk_size`].
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the connection can carry another request after this response's
    /// body (whose end must then be known from its framing).
    pub fn keep_alive(&self) -> bool {
        connection_open(&self.headers, self.minor)
            && self.framing != Framing::UntilClose
            // A length next to a transfer coding cannot be trusted to end it.
            && !(self.header("transfer-encoding").is_some()
                && self.header("content-length").is_some())
    }
}

/// Parses a complete response head (as [`head_end`] delimits it) to a request
/// made with `method`.
pub fn parse_response_head(head: &[u8], method: Method) -> Result<ResponseHead, HttpError> {
    if head.len() > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| HttpError::BadHeader)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::BadStatusLine)?;
    let (version, rest) = status_line
        .split_once(' ')
        .ok_or(HttpError::BadStatusLine)?;
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(HttpError::Version),
    };
    let code = rest.split(' ').next().unwrap_or("");
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| code.len() == 3 && (100..=599).contains(s))
        .ok_or(HttpError::BadStatusLine)?;
    let headers = header_lines(lines)?;
    let length = content_length(&headers)?;
    let coding = headers
        .iter()
        .find(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.to_ascii_lowercase());
    let framing = if method == Method::Head || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(coding) = coding {
        // Chunked only when it is the last coding; anything else runs to the close.
        if coding.rsplit(',').next().map(str::trim) == Some("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    Ok(ResponseHead {
        status,
        minor,
        headers,
        framing,
    })
}

/// `http://host[:port][/]` as (host, port); port 80 when not given.
pub fn parse_proxy_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("proxy {url:?} must be an http:// URL"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("proxy {url:?} must be http://HOST[:PORT]"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("proxy {url:?} has a bad port"))?,
        ),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("proxy {url:?} has no host"));
    }
    Ok((host.to_string(), port))
}

/// Longest chunk-size line read (hex digits and extensions).
pub const MAX_CHUNK_LINE: usize = 1024;

/// The size of a chunk from its line (without CRLF): hex digits, then
/// extensions after `;`, which are ignored. At most 15 digits, so a size fits
/// any file and never overflows.
pub fn parse_chunk_size(line: &str) -> Result<u64, HttpError> {
    if line.len() > MAX_CHUNK_LINE {
        return Err(HttpError::BadChunk);
    }
    let digits = line
        .split(';')
        .next()
        .unwrap_or("")
        .trim_end_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HttpError::BadChunk);
    }
    u64::from_str_radix(digits, 16).map_err(|_| HttpError::BadChunk)
}

#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole file (no usable single range; several ranges are allowed to
    /// be answered in full).
    Ignore,
    Unsatisfiable,
    Range {
        start: u64,
        len: u64,
    },
}

/// Parses a `Range` header against a file of `size` bytes.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size > 0 => {
                let len = n.min(size);
                RangeRequest::Range {
                    start: size - len,
                    len,
                }
            }
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Ignore,
        },
        (false, true) => match parse(first) {
            Some(start) if start < size => RangeRequest::Range {
                start,
                len: size - start,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Ignore,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Range {
                        start,
                        len: end.min(size - 1) - start + 1,
                    }
                }
            }
            _ => RangeRequest::Ignore,
        },
        (true, true) => RangeRequest::Ignore,
    }
}

/// `text` fit for a terminal or a log line: control characters (escape
/// sequences, newlines that would forge lines) and non-ASCII shown escaped.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

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
    fn response_heads_say_how_their_bodies_end() {
        let parse = |text: &str, method| parse_response_head(text.as_bytes(), method);
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\nX-Cache: HIT from squid\r\n\r\n",
            Method::Get,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.minor, r.framing),
            (200, 1, Framing::Length(42))
        );
        assert_eq!(r.header("x-cache"), Some("HIT from squid"));
        assert!(r.keep_alive());
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::Get,
        );
        assert_eq!(r.unwrap().framing, Framing::Chunked);
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Method::Get,
        );
        assert_eq!(r.unwrap().framing, Framing::UntilClose);
        // A length beside chunked: chunked wins and the connection closes after.
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Get,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        assert!(!r.keep_alive());
        let r = parse("HTTP/1.0 200 OK\r\n\r\n", Method::Get).unwrap();
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(!r.keep_alive());
        for (text, method) in [
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
                Method::Get,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Method::Get),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                Method::Head,
            ),
        ] {
            assert_eq!(
                parse(text, method).unwrap().framing,
                Framing::Empty,
                "{text}"
            );
        }
        for bad in [
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 700 What\r\n\r\n",
            "HTTP/1.1\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(parse(bad, Method::Get).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proxy_urls_name_a_host_and_port() {
        assert_eq!(
            parse_proxy_url("http://10.0.2.2:3128"),
            Ok(("10.0.2.2".into(), 3128))
        );
        assert_eq!(
            parse_proxy_url("http://squid.lan/"),
            Ok(("squid.lan".into(), 80))
        );
        assert_eq!(
            parse_proxy_url("http://[::1]:8080"),
            Ok(("::1".into(), 8080))
        );
        for bad in [
            "squid:3128",
            "https://p:1",
            "http://",
            "http://u@p:1",
            "http://p:x",
            "http://p/x",
        ] {
            assert!(parse_proxy_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunk_sizes_are_bounded_hex() {
        assert_eq!(parse_chunk_size("0"), Ok(0));
        assert_eq!(parse_chunk_size("1A2b"), Ok(0x1a2b));
        assert_eq!(parse_chunk_size("10;name=value"), Ok(16));
        assert_eq!(
            parse_chunk_size("fffffffffffffff"),
            Ok(0xfff_ffff_ffff_ffff)
        );
        for bad in [
            "",
            ";x",
            "g",
            "-1",
            "1 0",
            "ffffffffffffffff",
            &"0".repeat(2000),
        ] {
            assert_eq!(parse_chunk_size(bad), Err(HttpError::BadChunk), "{bad:?}");
        }
    }

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

    #[test]
    fn heads() {
        let raw = b"GET /refs/os/v1?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\nrest";
        let end = head_end(raw).unwrap();
        assert_eq!(&raw[end..], b"rest");
        let h = parse_head(&raw[..end]).unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path(), "/refs/os/v1");
        assert_eq!(h.query("x"), Some("1"));
        assert_eq!(h.header("range"), Some("bytes=0-9"));
        assert!(!h.keep_alive());
        let h = parse_head(b"POST /status HTTP/1.0\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(h.content_length, 12);
        assert!(!h.keep_alive());
        assert!(
            parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive()
        );
    }

    #[test]
    fn bad_heads_are_refused() {
        use HttpError::*;
        for (raw, want) in [
            (&b"GET /\r\n\r\n"[..], BadRequestLine),
            (b"GET  / HTTP/1.1\r\n\r\n", BadRequestLine),
            (b"GET / HTTP/2\r\n\r\n", Version),
            (b"get / HTTP/1.1\r\n\r\n", BadRequestLine),
            (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", BadHeader),
            (b"GET / HTTP/1.1\r\nA: b\x1b[2J\r\n\r\n", BadHeader),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", BadLength),
            (b"GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", BadLength),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                BadLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                BadLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
            ),
        ] {
            assert_eq!(
                parse_head(raw),
                Err(want),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(TooManyHeaders)
        );
        assert_eq!(parse_head(&vec![b'a'; MAX_HEAD + 1]), Err(HeadTooLarge));
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Range { start: 0, len: 10 });
        assert_eq!(parse_range("bytes=90-", 100), Range { start: 90, len: 10 });
        assert_eq!(parse_range("bytes=-10", 100), Range { start: 90, len: 10 });
        assert_eq!(
            parse_range("bytes=-1000", 100),
            Range { start: 0, len: 100 }
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            Range { start: 50, len: 50 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("bytes=9-1", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-y", 100), Ignore);
    }

    #[test]
    fn printable_text_cannot_forge_lines_or_drive_a_terminal() {
        assert_eq!(printable("node-1"), "node-1");
        assert_eq!(
            printable("a\nimprint: error: forged\x1b[2J"),
            "a\\nimprint: error: forged\\u{1b}[2J"
        );
        assert_eq!(printable("é"), "\\u{e9}");
    }
}
