//! Several GETs in flight on one connection to a repository (HTTP/1.1
//! pipelining), plain or TLS.

use super::client::{Client, ClientError, MAX_IDLE};
use super::wire::{Conn, Exchange, Request, read_response, send};
use super::{FetchError, status_error};
use crate::format::http::{Method, Url};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Up to [`Pipeline::DEPTH`] GETs in flight on one kept-alive connection to a
/// repository (HTTP/1.1 pipelining): the next request is on its way while a
/// response arrives, so the connection never idles a round trip between two
/// files. An answer other than 200 leaves the connection in place; a broken
/// connection, or one the server closes, takes the requests still on it
/// along: the caller fetches those again its usual way, and the next request
/// connects afresh. Plain HTTP and HTTPS alike.
pub struct Pipeline {
    /// The repository's server (its target is not used).
    server: Url,
    /// The repository's path on the server, without a trailing slash.
    prefix: String,
    base: String,
    client: Arc<Client>,
    conn: Option<Conn>,
    /// Paths sent whose responses have not been read, oldest first.
    sent: VecDeque<String>,
    /// Since when the connection has carried no request.
    idle_since: Instant,
}

impl Pipeline {
    /// Requests one connection carries at once.
    pub const DEPTH: usize = 2;

    /// A pipeline to the repository at `base`; None where its URL has a query
    /// (the files' paths could not be added to it) or is not one `client` can
    /// reach.
    pub fn new(base: &str, client: Arc<Client>) -> Option<Pipeline> {
        let server = client.check(base).ok()?;
        if server.target.contains('?') {
            return None;
        }
        Some(Pipeline {
            prefix: server.target.trim_end_matches('/').to_string(),
            server,
            base: base.trim_end_matches('/').to_string(),
            client,
            conn: None,
            sent: VecDeque::new(),
            idle_since: Instant::now(),
        })
    }

    fn location(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn drop_connection(&mut self) {
        self.conn = None;
        self.sent.clear();
    }

    /// A new connection to the repository's server.
    pub fn open(&self) -> Result<Conn, ClientError> {
        self.client.connect(&self.server)
    }

    /// Starts with `conn`, opened by [`Pipeline::open`] at `since`, instead
    /// of connecting at the first request; a connection idle too long by
    /// then is not used.
    pub fn adopt(&mut self, conn: Conn, since: Instant) {
        if self.conn.is_none() && since.elapsed() <= MAX_IDLE {
            self.conn = Some(conn);
            self.idle_since = since;
        }
    }
}

impl super::Pipeline for Pipeline {
    fn pending(&self) -> usize {
        self.sent.len()
    }

    fn send(&mut self, path: &str) -> Result<(), FetchError> {
        let location = self.location(path);
        let network = |reason: String| FetchError::Network {
            location: location.clone(),
            reason,
        };
        if self.sent.len() >= Self::DEPTH {
            return Err(network(format!(
                "more than {} requests in flight",
                Self::DEPTH
            )));
        }
        if self.sent.is_empty() && self.idle_since.elapsed() > MAX_IDLE {
            self.conn = None;
        }
        if self.conn.is_none() {
            if !self.sent.is_empty() {
                return Err(network("the connection was lost".into()));
            }
            let conn = self.open().map_err(|e| e.at(location.clone()))?;
            self.conn = Some(conn);
        }
        let target = format!("{}/{path}", self.prefix);
        let request = Request::get(&target, &self.server.authority)
            .encode()
            .map_err(network)?;
        let written = match self.conn.as_mut() {
            Some(conn) => send(conn, &request),
            None => Err(Exchange::Stale),
        };
        if written.is_err() {
            self.drop_connection();
            return Err(network(
                "sending the request: the connection was closed".into(),
            ));
        }
        self.sent.push_back(path.to_string());
        Ok(())
    }

    fn receive(&mut self, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        let Some(path) = self.sent.pop_front() else {
            return Err(FetchError::Network {
                location: self.base.clone(),
                reason: "no request is waiting for its response".into(),
            });
        };
        let location = self.location(&path);
        let Some(conn) = self.conn.as_mut() else {
            return Err(FetchError::Network {
                location,
                reason: "the connection was lost".into(),
            });
        };
        let read = read_response(conn, Method::Get, limit, buf);
        if self.sent.is_empty() {
            self.idle_since = Instant::now();
        }
        match read {
            Ok(received) => {
                if !received.keep_alive {
                    self.drop_connection();
                }
                status_error(location, received.status).map_or(Ok(()), Err)
            }
            Err(e) => {
                self.drop_connection();
                Err(match e {
                    Exchange::TooLarge => FetchError::TooLarge { location, limit },
                    Exchange::Stale => FetchError::Network {
                        location,
                        reason: "the server closed the connection".into(),
                    },
                    Exchange::Failed(reason) => FetchError::Network { location, reason },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Pipeline as _, SystemResolver};
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// One connection served in rounds: each round reads `n` more request
    /// heads before it writes its bytes, so a client that did not send those
    /// requests ahead would stall it (and time out). Returns the request lines.
    fn serve(rounds: Vec<(usize, &'static [u8])>) -> (String, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/repo/", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut seen = Vec::new();
            let mut heads = Vec::new();
            for (n, reply) in rounds {
                while heads.len() < n {
                    let mut byte = [0u8; 1];
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return heads;
                    }
                    seen.push(byte[0]);
                    if seen.ends_with(b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen).to_string();
                        heads.push(head.lines().next().unwrap_or("").to_string());
                        seen.clear();
                    }
                }
                heads.clear();
                conn.write_all(reply).unwrap();
            }
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            String::from_utf8_lossy(&rest)
                .lines()
                .filter(|l| l.starts_with("GET "))
                .map(str::to_string)
                .collect()
        });
        (url, handle)
    }

    #[test]
    fn a_connection_idle_too_long_is_not_adopted() {
        let (url, server) = serve(vec![(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]);
        let mut p = pipeline(&url);
        // The server takes the first connection only.
        let fresh = p.open().unwrap();
        let stale = p.open().unwrap();
        p.adopt(stale, Instant::now() - MAX_IDLE * 2);
        assert!(p.conn.is_none());
        p.adopt(fresh, Instant::now());
        p.send("chunks/a").unwrap();
        let mut buf = Vec::new();
        p.receive(16, &mut buf).unwrap();
        assert_eq!(buf, b"ok");
        drop(p);
        server.join().unwrap();
    }

    #[test]
    fn only_plain_http_urls_it_can_send_as_they_are_are_pipelined() {
        let made = |url: &str| Pipeline::new(url, client(Duration::from_secs(1))).is_some();
        assert!(made("http://10.0.2.2:8080"));
        assert!(made("http://repo.example/images/"));
        assert!(made("http://[::1]:80/r"));
        assert!(!made("https://repo.example/"));
        assert!(!made("http://user@repo.example/"));
        assert!(!made("http://repo.example/a b"));
        assert!(!made("http://repo.example/r?x=1"));
    }

    fn client(timeout: Duration) -> Arc<Client> {
        Arc::new(Client::new(Arc::new(SystemResolver), timeout, None, 0))
    }

    fn pipeline(url: &str) -> Pipeline {
        Pipeline::new(url, client(Duration::from_secs(5))).unwrap()
    }

    #[test]
    fn requests_go_out_ahead_and_answers_come_back_in_order() {
        let (url, server) = serve(vec![
            (
                2,
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone",
            ),
            (
                1,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n",
            ),
        ]);
        let mut p = pipeline(&url);
        let mut buf = Vec::new();
        p.send("chunks/a").unwrap();
        p.send("chunks/b").unwrap();
        assert!(p.send("chunks/c").is_err(), "no more than DEPTH at once");
        assert_eq!(p.pending(), 2);
        p.receive(10, &mut buf).unwrap();
        assert_eq!(buf, b"abc");
        // A refusal leaves the connection, and what follows it, in place.
        let err = p.receive(10, &mut buf).unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("/repo/chunks/b"), "{err}");
        assert_eq!(p.pending(), 0);
        p.send("chunks/c").unwrap();
        p.receive(10, &mut buf).unwrap();
        assert_eq!(buf, b"xyz");
        drop(p);
        assert!(server.join().unwrap().is_empty(), "one connection for all");
    }

    #[test]
    fn a_closing_or_oversized_answer_drops_the_requests_behind_it() {
        let (url, server) = serve(vec![(
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        )]);
        let mut p = pipeline(&url);
        let mut buf = Vec::new();
        p.send("a").unwrap();
        p.send("b").unwrap();
        p.receive(10, &mut buf).unwrap();
        assert_eq!(buf, b"ok");
        assert_eq!(p.pending(), 0, "b went with the connection");
        assert!(p.receive(10, &mut buf).is_err());
        server.join().unwrap();

        let (url, server) = serve(vec![(
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
        )]);
        let mut p = pipeline(&url);
        p.send("a").unwrap();
        p.send("b").unwrap();
        let err = p.receive(1000, &mut buf).unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
        assert_eq!(p.pending(), 0);
        assert!(buf.len() <= 1000, "nothing past the limit is read");
        drop(p);
        server.join().unwrap();
    }
}
