//! A client's request head and the byte range it asks for, as the server reads them.

use super::{
    HttpError, MAX_HEAD, Method, connection_open, content_length, find_header, header_lines,
};

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
        "PUT" => Method::Put,
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

#[cfg(test)]
mod tests {
    use super::super::{MAX_HEADERS, head_end};
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
}
