//! Sockets beyond std: TCP_NODELAY, rtnetlink requests, and the DHCP
//! client's packet filter.

use std::io;

/// Turns off Nagle's algorithm. Set on a listening socket, Linux passes it on to
/// every accepted connection; without it a response written as header + body waits
/// for the peer's delayed ACK (40 ms) on keep-alive connections.
pub fn set_tcp_nodelay(socket: impl std::os::fd::AsFd) -> io::Result<()> {
    rustix::net::sockopt::set_tcp_nodelay(socket, true).map_err(io::Error::from)
}

/// Sends one rtnetlink request and waits for the kernel's acknowledgement.
pub fn netlink_request(message: &[u8], seq: u32) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketType, netlink};
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?; // None is NETLINK_ROUTE
    rustix::net::bind(&socket, &netlink::SocketAddrNetlink::new(0, 0))?;
    rustix::net::sendto(
        &socket,
        message,
        rustix::net::SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;
    let mut reply = vec![0u8; 8192];
    let (n, _) = rustix::net::recv(&socket, &mut reply[..], rustix::net::RecvFlags::empty())?;
    match crate::format::netlink::parse_ack(&reply[..n], seq) {
        Ok(0) => Ok(()),
        Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
        Err(what) => Err(io::Error::other(what)),
    }
}

/// Lets only ARP and IPv4 UDP datagrams to `port` through to the packet socket
/// `fd` (a classic BPF filter, as `tcpdump arp or udp dst port N` compiles
/// it), so a DHCP client's raw socket is not handed a copy of every frame the
/// machine receives.
pub fn filter_udp_dst_port(socket: &impl std::os::fd::AsRawFd, port: u16) -> io::Result<()> {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // ARP (the client resolves the server it renews with), or: ethertype IPv4,
    // protocol UDP, not a fragment, the destination port.
    let program = [
        op(0x28, 0, 0, 12),          // ldh [12]
        op(0x15, 8, 0, 0x0806),      // jeq ARP ? accept : next
        op(0x15, 0, 8, 0x0800),      // jeq IPv4 ? next : drop
        op(0x30, 0, 0, 23),          // ldb [23]
        op(0x15, 0, 6, 17),          // jeq UDP ? next : drop
        op(0x28, 0, 0, 20),          // ldh [20]
        op(0x45, 4, 0, 0x1fff),      // jset fragment offset ? drop : next
        op(0xb1, 0, 0, 14),          // ldxb 4*([14]&0xf)
        op(0x48, 0, 0, 16),          // ldh [x+16]
        op(0x15, 0, 1, port as u32), // jeq port ? accept : drop
        op(0x06, 0, 0, 0x40000),     // accept
        op(0x06, 0, 0, 0),           // drop
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `socket` is an open descriptor for the call's length (borrowed);
    // `fprog` points at `program`, which lives until after the call, and the
    // kernel copies the program and keeps no pointer to it. The size passed is
    // that of `fprog`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
