//! HTTP/1.x request heads and byte ranges, parsed from bytes a client sent, with
//! every size bounded before anything is kept: the server in `host::serve` reads
//! at most [`MAX_HEAD`] bytes and hands them here.

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

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client asked to keep the connection open after this request.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let says = |token: &str| connection.split(',').any(|t| t.trim() == token);
        if self.minor == 0 {
            says("keep-alive")
        } else {
            !says("close")
        }
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
    let mut content_length = None;
    for (name, value) in &headers {
        match name.as_str() {
            "transfer-encoding" => return Err(HttpError::Chunked),
            "content-length" => {
                let n = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(HttpError::BadLength)?;
                // Two different lengths: a request smuggling attempt or a bug.
                if content_length.is_some_and(|c| c != n) {
                    return Err(HttpError::BadLength);
                }
                content_length = Some(n);
            }
            _ => {}
        }
    }
    Ok(RequestHead {
        method,
        target: target.to_string(),
        minor,
        headers,
        content_length: content_length.unwrap_or(0),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
