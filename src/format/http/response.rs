//! A server's response head and chunk sizes, as the client reads them.

use super::{
    HttpError, MAX_HEAD, Method, connection_open, content_length, find_header, header_lines,
};

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
}
