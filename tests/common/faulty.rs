//! A small HTTP server over a repository directory that injects faults into
//! its responses, as a plan says.

use super::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fault-injecting server does to one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Close the connection without answering.
    Drop,
    /// 500 Internal Server Error.
    ServerError,
    /// Announce the full length, send half, close.
    Truncate,
    /// Flip one byte in the middle of the body.
    FlipByte,
    /// Send a valid zstd frame of other content (passes decompression, fails the hash).
    WrongContent,
    /// Wait longer than the client's timeout before answering.
    Stall,
}

/// Decides the fault for the `attempt`-th request (0-based) of `path`.
pub type FaultPlan = dyn Fn(&str, u64) -> Fault + Send + Sync;

/// A small HTTP/1.1 server over a repository directory that injects faults into
/// responses according to a plan. Keep-alive, GET only.
pub struct FaultyServer {
    pub url: String,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicU64>,
    /// Requests answered while the client's next one on the same connection
    /// was already waiting (pipelined).
    pub pipelined: Arc<AtomicU64>,
    pub faults: Arc<Mutex<Vec<(String, Fault)>>>,
}

impl FaultyServer {
    pub fn start(root: &Path, plan: Arc<FaultPlan>, delay: Duration, stall: Duration) -> Self {
        Self::start_with(root, plan, delay, stall, false)
    }

    /// Fault-free, holding each answer until the client's next request on the
    /// connection has arrived, or `hold` has passed: whether requests go ahead is
    /// then counted without a race against the client's speed.
    pub fn start_holding(root: &Path, hold: Duration) -> Self {
        Self::start_with(
            root,
            Arc::new(|_: &str, _| Fault::None),
            hold,
            Duration::ZERO,
            true,
        )
    }

    fn start_with(
        root: &Path,
        plan: Arc<FaultPlan>,
        delay: Duration,
        stall: Duration,
        hold: bool,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let pipelined = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
        let root = root.to_path_buf();
        {
            let (stop, requests, faults) = (stop.clone(), requests.clone(), faults.clone());
            let pipelined = pipelined.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let ctx = Ctx {
                        root: root.clone(),
                        plan: plan.clone(),
                        attempts: attempts.clone(),
                        requests: requests.clone(),
                        pipelined: pipelined.clone(),
                        faults: faults.clone(),
                        delay,
                        stall,
                        hold,
                    };
                    std::thread::spawn(move || ctx.serve(conn));
                }
            });
        }
        FaultyServer {
            url,
            stop,
            requests,
            pipelined,
            faults,
        }
    }

    pub fn injected(&self) -> Vec<(String, Fault)> {
        self.faults.lock().unwrap().clone()
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Whether the client's next request has arrived before this one's answer.
fn next_request_waiting(reader: &BufReader<TcpStream>, conn: &TcpStream) -> bool {
    if !reader.buffer().is_empty() {
        return true;
    }
    let _ = conn.set_nonblocking(true);
    let waiting = conn.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
    let _ = conn.set_nonblocking(false);
    waiting
}

struct Ctx {
    root: PathBuf,
    plan: Arc<FaultPlan>,
    attempts: Arc<Mutex<HashMap<String, u64>>>,
    requests: Arc<AtomicU64>,
    pipelined: Arc<AtomicU64>,
    faults: Arc<Mutex<Vec<(String, Fault)>>>,
    delay: Duration,
    stall: Duration,
    /// `delay` is the longest wait for the next request, not a fixed one.
    hold: bool,
}

impl Ctx {
    fn serve(self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut conn = conn;
        loop {
            let mut request_line = String::new();
            match reader.read_line(&mut request_line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.trim().is_empty() => break,
                    Ok(_) => {}
                }
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let attempt = {
                let mut a = self.attempts.lock().unwrap();
                let n = a.entry(path.clone()).or_insert(0);
                *n += 1;
                *n - 1
            };
            let fault = (self.plan)(&path, attempt);
            if fault != Fault::None {
                self.faults.lock().unwrap().push((path.clone(), fault));
            }
            if self.hold {
                let until = std::time::Instant::now() + self.delay;
                while !next_request_waiting(&reader, &conn) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            } else {
                std::thread::sleep(self.delay);
            }
            if next_request_waiting(&reader, &conn) {
                self.pipelined.fetch_add(1, Ordering::Relaxed);
            }
            let body = match std::fs::read(self.root.join(&path)) {
                Ok(b) => b,
                Err(_) => {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
                    );
                    continue;
                }
            };
            let mut body = body;
            match fault {
                Fault::None => {}
                Fault::Drop => {
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
                Fault::ServerError => {
                    let _ = conn.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                    );
                    continue;
                }
                Fault::Truncate => {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&body[..body.len() / 2]);
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
                Fault::FlipByte => {
                    let mid = body.len() / 2;
                    body[mid] ^= 0x5a;
                }
                Fault::WrongContent => {
                    let fake = vec![0x42u8; CHUNK];
                    body = zstd::bulk::compress(&fake, 1).expect("compress");
                }
                Fault::Stall => {
                    // The client has given up on this connection by now.
                    std::thread::sleep(self.stall);
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
                body.len()
            );
            if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&body).is_err() {
                return;
            }
        }
    }
}
