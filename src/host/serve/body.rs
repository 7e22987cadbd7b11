//! Request bodies: read whole (their length checked before anything is
//! allocated), handed on in pieces as they arrive, or thrown away.

use super::RepoServer;
use super::reply::Reply;
use crate::format::http::RequestHead;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The slowest a body may arrive, on average, beyond the I/O timeout: a large
/// upload gets the time it needs, a client trickling one holds its thread for
/// a bounded time.
const MIN_BODY_RATE: u64 = 256 << 10;

impl RepoServer {
    /// Reads a body of the declared length, at most `limit` bytes: the length is
    /// checked before anything is read or allocated.
    pub(super) fn read_body(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        limit: u64,
    ) -> Result<Vec<u8>, Reply> {
        if head.content_length > limit {
            return Err(too_large(limit));
        }
        let mut body = Vec::with_capacity(head.content_length as usize);
        self.read_body_with(head, stream, buf, limit, |piece| {
            body.extend_from_slice(piece);
            Ok(())
        })?;
        Ok(body)
    }

    /// Reads a body of the declared length, at most `limit` bytes (checked
    /// before anything is read), handing it to `sink` in pieces as it comes: a
    /// client waiting for `100 Continue` is told to go on first. It may take
    /// the I/O timeout, and a second more for every [`MIN_BODY_RATE`] bytes.
    /// When it cannot be read whole, or `sink` refuses a piece, the answer
    /// closes the connection (the rest of the body is not read).
    pub(super) fn read_body_with(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        limit: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), Reply>,
    ) -> Result<(), Reply> {
        let len = head.content_length;
        if len > limit {
            return Err(too_large(limit));
        }
        let take = len.min(buf.len() as u64) as usize;
        if take > 0 {
            sink(&buf[..take]).map_err(Reply::closing)?;
            buf.drain(..take);
        }
        let mut left = len - take as u64;
        if left > 0 && take == 0 && expects_continue(head) {
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| Reply::text(400, "connection lost\n").closing())?;
        }
        let deadline =
            Instant::now() + self.limits.io_timeout + Duration::from_secs(len / MIN_BODY_RATE);
        let mut piece = [0u8; 16 << 10];
        while left > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Reply::text(408, "request body too slow\n").closing());
            }
            let _ = stream.set_read_timeout(Some(remaining));
            let want = (piece.len() as u64).min(left) as usize;
            match stream.read(&mut piece[..want]) {
                Ok(0) => return Err(Reply::text(400, "request body cut short\n").closing()),
                Ok(n) => {
                    sink(&piece[..n]).map_err(Reply::closing)?;
                    left -= n as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Err(Reply::text(400, "request body unreadable\n").closing()),
            }
        }
        Ok(())
    }

    /// Answers `reply` to a request whose body was not read: a client that
    /// waits for `100 Continue` has not sent it, and the connection closes;
    /// another's is read and thrown away (up to `limit`, a piece at a time) so
    /// that the connection stays in step.
    pub(super) fn refuse_body(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        limit: u64,
        reply: Reply,
    ) -> Reply {
        if head.content_length == 0 {
            return reply;
        }
        if expects_continue(head) && buf.is_empty() {
            return reply.closing();
        }
        match self.read_body_with(head, stream, buf, limit, |_| Ok(())) {
            Ok(()) => reply,
            Err(_) => reply.closing(),
        }
    }
}

/// A request body over `limit`: refused unread, and the connection closed.
pub(super) fn too_large(limit: u64) -> Reply {
    Reply::text(413, &format!("body larger than {limit} bytes\n")).closing()
}

/// Whether the client sends its body only once told to go on.
fn expects_continue(head: &RequestHead) -> bool {
    head.minor == 1
        && head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}
