//! A small DNS resolver for the deploy environment, where static glibc has no
//! working `getaddrinfo`: A-record queries over UDP to the lease's name servers.

use super::NameResolver;
use crate::format::dns;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Resolves names against the lease's DNS servers over UDP.
#[derive(Debug)]
pub struct DnsResolver {
    /// Name servers (port 53 in practice; any port for tests).
    pub servers: Vec<SocketAddr>,
}

static DNS_ID: AtomicU32 = AtomicU32::new(0x4a1d);

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
                let id = DNS_ID.fetch_add(1, Ordering::Relaxed) as u16;
                let query = dns::query(id, host).map_err(io::Error::other)?;
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                socket.send_to(&query, server)?;
                let mut buf = [0u8; 1500];
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => match dns::parse_answer(&buf[..n], id, host) {
                        Ok(ips) if !ips.is_empty() => {
                            return Ok(ips
                                .into_iter()
                                .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, port)))
                                .collect());
                        }
                        Ok(_) => last = io::Error::other(format!("{host} has no IPv4 address")),
                        Err(dns::DnsError::NoSuchName(n)) => {
                            return Err(io::Error::other(format!("host {n} does not exist")));
                        }
                        Err(e) => last = io::Error::other(e.to_string()),
                    },
                    Err(e) => {
                        last = io::Error::other(format!("DNS server {server} did not answer: {e}"))
                    }
                }
            }
        }
        Err(last)
    }
}
