//! Name resolution, pluggable: a static binary in an initramfs has no working
//! C library resolver, so the deploy environment brings its own
//! (`DnsResolver`), and the host uses the system's.

use std::fmt::Debug;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// Turns a host name into addresses.
pub trait NameResolver: Debug + Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The C library's resolver: right on a normal host, useless in an initramfs.
#[derive(Debug, Default)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}
