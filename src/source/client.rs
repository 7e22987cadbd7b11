//! The one HTTP client: every repository fetch, status event and command-line
//! call goes through it (the pipeline and the proxy use its connections).
//! Plain HTTP or HTTPS checked against the caller's CA roots, a timeout on
//! every step, kept-alive connections reused, redirects of a GET followed.

use super::resolve::NameResolver;
use super::tls::{CaRoots, describe_tls};
use super::wire::{Conn, Exchange, Request, connect, read_response, send};
use crate::format::http::{Method, Url, printable};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The network or the server failed: worth trying again.
    #[error("{0}")]
    Network(String),
    /// The server's certificate or the handshake was refused: refused again
    /// on every try.
    #[error("{0}")]
    Tls(String),
    #[error("body larger than the {0} bytes expected")]
    TooLarge(u64),
    /// The URL (or a redirect's) is not one this client can use.
    #[error("{0}")]
    Url(String),
}

/// What a server answered (its body is in the caller's buffer).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Where a redirect that was not followed points.
    pub location: Option<String>,
}

/// How a status server took an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Taken,
    /// The server said no (4xx): sending it again changes nothing.
    Refused(u16),
    /// It could not be sent now: why.
    Failed(String),
}

/// Redirects of one GET followed at most.
const MAX_REDIRECTS: usize = 5;

/// A kept-alive connection older than this is not reused: servers close
/// idle ones (after 5 s and up), and a request sent on one just closed is lost.
pub const MAX_IDLE: Duration = Duration::from_secs(2);

pub struct Client {
    resolver: Arc<dyn NameResolver>,
    timeout: Duration,
    roots: Option<CaRoots>,
    /// Connections kept alive, by origin, and since when they idle.
    idle: Mutex<Vec<(String, Conn, Instant)>>,
    max_idle: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:?})", self.roots.as_ref().map(CaRoots::origin))
    }
}

impl Client {
    /// `timeout` bounds connecting and each wait for data; `roots` check
    /// `https://` servers (none: `https://` is refused); at most `max_idle`
    /// connections are kept for reuse.
    pub fn new(
        resolver: Arc<dyn NameResolver>,
        timeout: Duration,
        roots: Option<CaRoots>,
        max_idle: usize,
    ) -> Client {
        Client {
            resolver,
            timeout,
            roots,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub fn roots(&self) -> Option<&CaRoots> {
        self.roots.as_ref()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn resolver(&self) -> &Arc<dyn NameResolver> {
        &self.resolver
    }

    /// Parses `url` and checks this client can reach it: an `https://` one
    /// needs CA roots.
    pub fn check(&self, url: &str) -> Result<Url, ClientError> {
        let parsed = Url::parse(url).map_err(ClientError::Url)?;
        if parsed.secure && self.roots.is_none() {
            return Err(ClientError::Url(
                "no CA certificates to check the server's certificate against: \
                 give --ca FILE (the deploy environment takes them from `imprint initramfs build --ca FILE`)"
                    .into(),
            ));
        }
        Ok(parsed)
    }

    /// A new connection to `url`'s server.
    pub fn connect(&self, url: &Url) -> Result<Conn, ClientError> {
        let tls = match (url.secure, &self.roots) {
            (true, Some(roots)) => Some(
                roots
                    .client_config()
                    .map_err(|e| ClientError::Tls(format!("TLS: {e}")))?,
            ),
            _ => None,
        };
        connect(url, self.resolver.as_ref(), self.timeout, tls.as_ref())
            .map_err(|e| self.connect_error(url, &e))
    }

    fn connect_error(&self, url: &Url, e: &io::Error) -> ClientError {
        match tls_problem(e) {
            Some(tls) => ClientError::Tls(describe_tls(tls, self.roots.as_ref())),
            None => ClientError::Network(format!(
                "connecting to {}: {}",
                printable(&url.authority),
                describe_io(e)
            )),
        }
    }

    /// GETs `url` into `buf` (cleared first), at most `limit` bytes, following
    /// redirects. `authorization` goes only to the server first asked: a
    /// redirect elsewhere does not carry it, and one from `https://` to
    /// `http://` is refused.
    pub fn get(
        &self,
        url: &str,
        authorization: Option<&str>,
        limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Answer, ClientError> {
        let mut at = self.check(url)?;
        let origin = at.origin();
        for _ in 0..=MAX_REDIRECTS {
            let request = Request {
                authorization: authorization.filter(|_| at.origin() == origin),
                ..Request::get(&at.target, &at.authority)
            };
            let answer = self.exchange(&at, &request, limit, buf)?;
            let Some(location) = answer
                .location
                .as_deref()
                .filter(|_| matches!(answer.status, 301 | 302 | 303 | 307 | 308))
            else {
                return Ok(answer);
            };
            let next = at.join(location).map_err(|why| {
                ClientError::Url(format!("the server redirected to a URL not usable: {why}"))
            })?;
            if at.secure && !next.secure {
                return Err(ClientError::Url(format!(
                    "the server redirected from https:// to {}; give that URL if it is meant",
                    printable(&format!("{}{}", next.origin(), next.target))
                )));
            }
            at = self.check(&format!("{}{}", next.origin(), next.target))?;
        }
        Err(ClientError::Url(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            printable(url)
        )))
    }

    /// POSTs `body` of media type `kind` to `url`; the answer's body goes into
    /// `buf`, at most `limit` bytes. Redirects are not followed.
    pub fn post(
        &self,
        url: &str,
        authorization: Option<&str>,
        body: (&str, &[u8]),
        limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Answer, ClientError> {
        self.send(Method::Post, url, authorization, body, limit, buf)
    }

    /// Sends `body` of media type `kind` to `url` with `method` (POST, PUT);
    /// the answer's body goes into `buf`, at most `limit` bytes. Redirects
    /// are not followed.
    pub fn send(
        &self,
        method: Method,
        url: &str,
        authorization: Option<&str>,
        (kind, body): (&str, &[u8]),
        limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Answer, ClientError> {
        let at = self.check(url)?;
        let request = Request {
            method,
            authorization,
            body: Some((kind, body)),
            ..Request::get(&at.target, &at.authority)
        };
        self.exchange(&at, &request, limit, buf)
    }

    /// POSTs the JSON `event` to the status server at `url`, with the
    /// deploy's `credential` as a bearer token.
    pub fn post_event(&self, url: &str, credential: Option<&str>, event: &[u8]) -> Delivery {
        let authorization = credential.map(|c| format!("Bearer {c}"));
        let mut answer = Vec::new();
        let kind_and_body = ("application/json", event);
        match self.post(
            url,
            authorization.as_deref(),
            kind_and_body,
            4096,
            &mut answer,
        ) {
            Ok(a) if (200..300).contains(&a.status) => Delivery::Taken,
            Ok(a) if (400..500).contains(&a.status) => Delivery::Refused(a.status),
            Ok(a) => Delivery::Failed(format!("the server answered {}", a.status)),
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }

    /// One request and its answer, on a kept-alive connection to the server
    /// if one idled less than [`MAX_IDLE`]. One the server closed meanwhile
    /// fails the request (the caller's retry connects afresh): sending it
    /// again here would hide a server that drops requests from the retries
    /// the caller counts.
    fn exchange(
        &self,
        url: &Url,
        request: &Request,
        limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Answer, ClientError> {
        let bytes = request.encode().map_err(ClientError::Url)?;
        let origin = url.origin();
        let conn = match self.reuse(&origin) {
            Some(conn) => conn,
            None => self.connect(url)?,
        };
        self.on(conn, &origin, &bytes, request.method, limit, buf)
            .map_err(|e| exchange_error(e, limit))
    }

    fn on(
        &self,
        mut conn: Conn,
        origin: &str,
        request: &[u8],
        method: Method,
        limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Answer, Exchange> {
        send(&mut conn, request)?;
        let received = read_response(&mut conn, method, limit, buf)?;
        // Bytes past the answer were never asked for: the connection is not
        // trusted with another request.
        if received.keep_alive && conn.buffer().is_empty() {
            self.keep(origin, conn);
        }
        Ok(Answer {
            status: received.status,
            location: received.location,
        })
    }

    fn reuse(&self, origin: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(_, _, since)| since.elapsed() <= MAX_IDLE);
        let at = idle.iter().rposition(|(o, _, _)| o == origin)?;
        Some(idle.swap_remove(at).1)
    }

    fn keep(&self, origin: &str, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            // The oldest goes first: it is the likeliest to be closed.
            idle.remove(0);
        }
        idle.push((origin.to_string(), conn, Instant::now()));
    }
}

fn exchange_error(e: Exchange, limit: u64) -> ClientError {
    match e {
        Exchange::Stale => ClientError::Network("the server closed the connection".into()),
        Exchange::TooLarge => ClientError::TooLarge(limit),
        Exchange::Failed(why) => ClientError::Network(why),
    }
}

/// The TLS error inside `e`, if it is one: rustls passes a handshake's
/// failure up wrapped in the I/O error of the read or write that met it.
pub fn tls_problem(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// An I/O error said plainly.
fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::ConnectionRefused => "connection refused (is the server running?)".into(),
        _ => e.to_string(),
    }
}

impl ClientError {
    /// The error of a fetch of `location`.
    pub fn at(self, location: String) -> super::FetchError {
        use super::FetchError;
        match self {
            ClientError::Network(reason) | ClientError::Url(reason) => {
                FetchError::Network { location, reason }
            }
            ClientError::Tls(reason) => FetchError::Tls { location, reason },
            ClientError::TooLarge(limit) => FetchError::TooLarge { location, limit },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::SystemResolver;
    use super::super::wire::MAX_ERROR_BODY;
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread::JoinHandle;

    fn client() -> Client {
        Client::new(Arc::new(SystemResolver), Duration::from_secs(5), None, 4)
    }

    /// Reads one request head from `conn`: its lines, or None at the end.
    fn head(conn: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                return Some(lines);
            }
            lines.push(line.trim_end().to_string());
        }
    }

    /// A server taking `conns` connections, answering each request head with
    /// what `reply` makes of it; returns its URL and every head it read.
    fn server(
        conns: usize,
        reply: impl Fn(&[String]) -> String + Send + 'static,
    ) -> (String, JoinHandle<Vec<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for _ in 0..conns {
                let (conn, _) = listener.accept().unwrap();
                let mut conn = BufReader::new(conn);
                while let Some(h) = head(&mut conn) {
                    let answer = reply(&h);
                    heads.push(h);
                    conn.get_mut().write_all(answer.as_bytes()).unwrap();
                    if answer.contains("Connection: close") {
                        break;
                    }
                }
            }
            heads
        });
        (url, handle)
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// GETs `/a` then `/b` from a server that answers with the request line:
    /// each answer is its own request's.
    fn gets_answer_in_step(c: &Client, url: &str, buf: &mut Vec<u8>) {
        for path in ["/a", "/b"] {
            let answer = c.get(&format!("{url}{path}"), None, 100, buf).unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(*buf, format!("GET {path} HTTP/1.1").as_bytes());
        }
    }

    #[test]
    fn requests_share_a_kept_alive_connection() {
        let (url, server) = server(1, |h| ok(&h[0]));
        let c = client();
        let mut buf = Vec::new();
        gets_answer_in_step(&c, &url, &mut buf);
        let posted = c
            .post(
                &format!("{url}/s"),
                Some("Bearer t"),
                ("application/json", b"{}"),
                100,
                &mut buf,
            )
            .unwrap();
        assert_eq!(posted.status, 200);
        drop(c);
        let heads = server.join().unwrap();
        assert_eq!(heads.len(), 3, "one connection carried all three");
        assert!(
            heads[2].contains(&"Authorization: Bearer t".to_string()),
            "{heads:?}"
        );
        assert!(
            heads[2].contains(&"Content-Length: 2".to_string()),
            "{heads:?}"
        );
    }

    #[test]
    fn interim_answers_are_skipped_and_the_connection_stays_in_step() {
        let (url, hinting) = server(1, |h| {
            format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n{}",
                ok(&h[0])
            )
        });
        let c = client();
        let mut buf = Vec::new();
        gets_answer_in_step(&c, &url, &mut buf);
        drop(c);
        assert_eq!(hinting.join().unwrap().len(), 2, "one connection, in step");
        let (url, _server) = server(1, |_| "HTTP/1.1 101 Switching Protocols\r\n\r\n".into());
        let err = client()
            .get(&format!("{url}/a"), None, 100, &mut buf)
            .unwrap_err();
        assert!(err.to_string().contains("switched protocols"), "{err}");
    }

    #[test]
    fn a_refusal_is_told_whatever_page_comes_with_it() {
        let page = |n: usize| {
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {n}\r\n\r\n{}",
                "x".repeat(n)
            )
        };
        // A page over the body's limit is read; one over the error page's
        // limit is cut, and its connection not used again.
        let big = MAX_ERROR_BODY as usize + 1;
        let (url, server) = server(2, move |h| match h[0].as_str() {
            "GET /small HTTP/1.1" => page(2000),
            _ => page(big),
        });
        let c = client();
        let mut buf = Vec::new();
        for path in ["/small", "/big", "/small"] {
            let answer = c.get(&format!("{url}{path}"), None, 10, &mut buf).unwrap();
            assert_eq!(answer.status, 404, "{path}");
        }
        drop(c);
        assert_eq!(server.join().unwrap().len(), 3);
    }

    #[test]
    fn a_connection_the_server_closed_fails_one_request_and_is_not_used_again() {
        // The server closes each connection after one answer without saying so.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (conn, _) = listener.accept().unwrap();
                let mut conn = BufReader::new(conn);
                head(&mut conn).unwrap();
                conn.get_mut().write_all(ok("x").as_bytes()).unwrap();
            }
        });
        let c = client();
        let mut buf = Vec::new();
        c.get(&format!("{url}/a"), None, 10, &mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let err = c.get(&format!("{url}/b"), None, 10, &mut buf).unwrap_err();
        assert!(matches!(err, ClientError::Network(_)), "{err}");
        assert!(err.to_string().contains("closed the connection"), "{err}");
        c.get(&format!("{url}/c"), None, 10, &mut buf).unwrap();
        assert_eq!(buf, b"x");
        server.join().unwrap();
    }

    #[test]
    fn redirects_are_followed_and_credentials_stay_with_their_server() {
        let (mirror, mirror_heads) = server(1, |h| ok(&h[0]));
        let to_mirror = format!("{mirror}/mirror/c");
        let (url, heads) = server(1, move |h| match h[0].as_str() {
            "GET /repo/a HTTP/1.1" => {
                "HTTP/1.1 301 Moved\r\nLocation: b\r\nContent-Length: 0\r\n\r\n".into()
            }
            "GET /repo/b HTTP/1.1" => {
                format!("HTTP/1.1 302 Found\r\nLocation: {to_mirror}\r\nContent-Length: 0\r\n\r\n")
            }
            _ => "HTTP/1.1 307 Again\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n".into(),
        });
        let c = client();
        let mut buf = Vec::new();
        let answer = c
            .get(
                &format!("{url}/repo/a"),
                Some("Bearer secret"),
                100,
                &mut buf,
            )
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(buf, b"GET /mirror/c HTTP/1.1");
        let err = c
            .get(&format!("{url}/loop"), None, 100, &mut buf)
            .unwrap_err();
        assert!(err.to_string().contains("more than 5 redirects"), "{err}");
        drop(c);
        let heads = heads.join().unwrap();
        // The same server is asked again with the credential; the mirror never sees it.
        assert!(heads[1].contains(&"Authorization: Bearer secret".to_string()));
        let mirror_heads = mirror_heads.join().unwrap();
        assert!(
            !mirror_heads[0]
                .iter()
                .any(|l| l.starts_with("Authorization")),
            "{mirror_heads:?}"
        );
    }

    #[test]
    fn https_needs_roots_and_bad_urls_are_refused_before_connecting() {
        let c = client();
        let mut buf = Vec::new();
        for url in ["https://repo.example/x", "ftp://h/", "http://h/a b"] {
            let err = c.get(url, None, 10, &mut buf).unwrap_err();
            assert!(matches!(err, ClientError::Url(_)), "{url}: {err}");
        }
        let err = c.get("http://h/x", Some("Bearer a\r\nX: y"), 10, &mut buf);
        assert!(matches!(err, Err(ClientError::Url(_))));
    }

    #[test]
    fn a_refused_connection_says_so() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = client()
            .get(
                &format!("http://127.0.0.1:{port}/"),
                None,
                10,
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(matches!(err, ClientError::Network(_)), "{err}");
        assert!(err.to_string().contains("connection refused"), "{err}");
    }
}
