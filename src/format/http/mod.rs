//! HTTP/1.x heads parsed from bytes a peer sent, with every size bounded
//! before anything is kept: readers take at most [`MAX_HEAD`] bytes of a head
//! and hand them here. Requests (a client's, to the server) and responses (a
//! server's or a proxy's, to the client) share the header rules below.

mod dates;
mod request;
mod response;
mod url;

pub use dates::{http_date, not_modified, parse_http_date, validators};
pub use request::{RangeRequest, RequestHead, parse_head, parse_range};
pub use response::{Framing, MAX_CHUNK_LINE, ResponseHead, parse_chunk_size, parse_response_head};
pub use url::{MAX_URL, Url, parse_proxy_url};

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
    Put,
    Other,
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

/// Where a complete head ends in `buf` (just past the blank line), if it does.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
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
    fn printable_text_cannot_forge_lines_or_drive_a_terminal() {
        assert_eq!(printable("node-1"), "node-1");
        assert_eq!(
            printable("a\nimprint: error: forged\x1b[2J"),
            "a\\nimprint: error: forged\\u{1b}[2J"
        );
        assert_eq!(printable("é"), "\\u{e9}");
    }
}
