//! Responses of `imprint serve`, and how they are written.

use crate::format::http;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

/// A response about to be written.
pub(super) struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Close the connection after it (the request could not be read whole).
    pub close: bool,
}

pub(super) enum Body {
    Bytes(Vec<u8>),
    /// A serialization many replies share (see [`super::views`]).
    Shared(Arc<Vec<u8>>),
    File {
        file: File,
        len: u64,
    },
}

impl Reply {
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: Body::Bytes(body.as_bytes().to_vec()),
            close: false,
        }
    }

    pub fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    pub fn len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::Shared(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// The status page's files, built into the binary. The page runs only its own
/// script (no inline code), so nothing a machine reports can run in it.
pub(super) fn page_asset(content_type: &str, text: &str) -> Reply {
    let mut reply = ok_reply(content_type, "no-cache", text.as_bytes().to_vec());
    reply.headers.extend([
        (
            "Content-Security-Policy",
            "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'".into(),
        ),
        ("X-Content-Type-Options", "nosniff".into()),
    ]);
    reply
}

pub(super) fn ok_reply(content_type: &str, cache: &str, body: Vec<u8>) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            ("Content-Type", content_type.to_string()),
            ("Cache-Control", cache.to_string()),
        ],
        body: Body::Bytes(body),
        close: false,
    }
}

/// Over the connection limit: a short answer, never waited on, then close.
pub(super) fn refuse_busy(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
    );
    let _ = stream.shutdown(Shutdown::Both);
}

pub(super) fn write_reply(
    stream: &mut TcpStream,
    reply: Reply,
    head_only: bool,
    keep: bool,
) -> io::Result<()> {
    let len = reply.len();
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    // An origin server with a clock says when it answered (RFC 9110 6.6.1):
    // caches reckon a response's age from it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out.push_str(&format!("Date: {}\r\n", http::http_date(now)));
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    // 204 and 304 carry no body, and a 304 must not announce one.
    if reply.status != 204 && reply.status != 304 {
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    out.push_str(if keep {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    stream.write_all(out.as_bytes())?;
    if head_only || reply.status == 204 || reply.status == 304 {
        return stream.flush();
    }
    match reply.body {
        Body::Bytes(bytes) => stream.write_all(&bytes)?,
        Body::Shared(bytes) => stream.write_all(&bytes)?,
        Body::File { file, len } => {
            let copied = io::copy(&mut file.take(len), stream)?;
            if copied != len {
                // The file shrank under us: the length promised cannot be kept.
                return Err(io::Error::other("file shorter than announced"));
            }
        }
    }
    stream.flush()
}
