//! A small DNS resolver for the deploy environment, where static glibc has no
//! working `getaddrinfo`: A-record queries over UDP to the lease's name servers,
//! each with a random id from a fresh port, answers taken only from the server
//! asked and only for the question asked.

use super::resolve::NameResolver;
use crate::format::dns;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// Resolves names against the lease's DNS servers over UDP.
#[derive(Debug)]
pub struct DnsResolver {
    /// Name servers (port 53 in practice; any port for tests).
    pub servers: Vec<SocketAddr>,
}

impl NameResolver for DnsResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if self.servers.is_empty() {
            return Err(io::Error::other(format!(
                "cannot resolve {host}: no DNS server known (DHCP gave none; use an IP address in imprint.repo= or dns in ip=)"
            )));
        }
        let mut last = io::Error::other(format!("cannot resolve {host}"));
        for _attempt in 0..3 {
            for server in &self.servers {
                match ask(server, host) {
                    Ok(ips) if !ips.is_empty() => {
                        return Ok(ips
                            .into_iter()
                            .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, port)))
                            .collect());
                    }
                    Ok(_) => last = io::Error::other(format!("{host} has no IPv4 address")),
                    Err(Answer::NoSuchName(n)) => {
                        return Err(io::Error::other(format!("host {n} does not exist")));
                    }
                    Err(Answer::Failed(e)) => last = e,
                }
            }
        }
        Err(last)
    }
}

enum Answer {
    NoSuchName(String),
    Failed(io::Error),
}

/// One query to `server`, from a fresh port with a random id, on a socket
/// connected to the server (the kernel drops datagrams from anyone else).
/// Replies that are not for this query are ignored until the time is up.
fn ask(server: &SocketAddr, host: &str) -> Result<Vec<Ipv4Addr>, Answer> {
    let failed = |e: io::Error| Answer::Failed(e);
    let id = u16::from_ne_bytes(crate::sys::random_bytes::<2>().map_err(failed)?);
    let query = dns::query(id, host).map_err(|e| failed(io::Error::other(e)))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(failed)?;
    socket.connect(server).map_err(failed)?;
    socket.send(&query).map_err(failed)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed(io::Error::other(format!(
                "DNS server {server} did not answer"
            ))));
        }
        socket.set_read_timeout(Some(left)).map_err(failed)?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(failed(io::Error::other(format!(
                    "DNS server {server} did not answer: {e}"
                ))));
            }
        };
        match dns::parse_answer(&buf[..n], id, host) {
            Ok(ips) => return Ok(ips),
            Err(dns::DnsError::WrongId | dns::DnsError::WrongQuestion) => {}
            Err(dns::DnsError::NoSuchName(n)) => return Err(Answer::NoSuchName(n)),
            Err(e) => return Err(failed(io::Error::other(e.to_string()))),
        }
    }
}
