//! Raw HTTP against a server under test: requests written by hand (so a test
//! controls every byte, and what a well-behaved client would never send), and
//! answers read as they come.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

/// A repository holding `os:v1`, served by `imprint serve`: (the repository,
/// the server, the image's digest).
pub fn served_repo() -> (Repo, Served, String) {
    let repo = Repo::new();
    let digest = repo.add("os:v1", &mixed_image(20, 20), &[]);
    let served = Served::start(&repo.path());
    (repo, served, digest)
}

/// Sends one raw HTTP request and returns the whole response (connection closed).
pub fn raw_request(addr: &str, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, request.starts_with("HEAD"))
}

/// A connection to `addr` from the loopback address `source` (127.0.0.2, ...).
pub fn connect_from(source: [u8; 4], addr: &str) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &std::net::SocketAddr::from((source, 0))).unwrap();
    connect(&fd, &addr.parse::<std::net::SocketAddr>().unwrap()).unwrap();
    TcpStream::from(fd)
}

/// A server on a free loopback port that answers every request with `body`
/// (of `content_type`) and counts them: (its port, the count).
pub fn answering_server(content_type: &str, body: String) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&asked);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = stream.write_all(format!("{head}{body}").as_bytes());
        }
    });
    (port, asked)
}

/// [`raw_request`] from the loopback address `source` (127.0.0.2, ...), as
/// another machine would send it.
pub fn raw_request_from(
    source: [u8; 4],
    addr: &str,
    request: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = connect_from(source, addr);
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, request.starts_with("HEAD"))
}

pub fn read_response(
    reader: &mut impl BufRead,
    head_only: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("content-length"));
    let mut body = Vec::new();
    if !head_only {
        match len {
            Some(n) => {
                body.resize(n, 0);
                reader.read_exact(&mut body).expect("body");
            }
            None => {
                reader.read_to_end(&mut body).expect("body");
            }
        }
    }
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads whatever a server sends until it closes or `wait` passes; the status
/// code of the first response, if one came.
pub fn answer_within(stream: &mut TcpStream, wait: std::time::Duration) -> (Option<u16>, bool) {
    use std::io::Read;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let status = String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    (status, closed)
}

/// A kept-alive connection, idle after one request for `path` was answered 200.
pub fn kept_alive(addr: &str, path: &str) -> TcpStream {
    kept_alive_on(TcpStream::connect(addr).unwrap(), path)
}

/// `conn` once it has had one answer (so the server counts it), kept open.
pub fn kept_alive_on(mut conn: TcpStream, path: &str) -> TcpStream {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    assert_eq!(read_response(&mut reader, false).0, 200);
    conn
}

pub fn get_ok(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    answer_within(&mut s, std::time::Duration::from_secs(10)).0 == Some(200)
}

pub fn post_status(addr: &str, path: &str, extra_headers: &str, body: &str) -> u16 {
    raw_request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .0
}

/// A connection from another loopback address (127.0.0.2), as another machine.
pub fn post_from(source: [u8; 4], addr: &str, body: &str) -> u16 {
    let mut s = connect_from(source, addr);
    write!(
        s,
        "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    answer_within(&mut s, std::time::Duration::from_secs(5))
        .0
        .unwrap()
}
