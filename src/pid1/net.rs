//! Network bring-up in the deploy environment: links up, an IPv4 lease by DHCP
//! (smoltcp over an AF_PACKET socket) or from the kernel's `ip=` syntax, applied
//! to the kernel interface through rtnetlink so the data path uses the kernel's
//! TCP; and a small DNS resolver for the repository's host name.

use crate::format::cmdline::{IpConfig, StaticIp};
use crate::format::netlink;
use crate::sys;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{Medium, RawSocket};
use smoltcp::socket::dhcpv4;
use smoltcp::wire::{EthernetAddress, HardwareAddress};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Nic {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

#[derive(Clone, Debug)]
pub struct Lease {
    pub nic: Nic,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "no network interface appeared within {0} s; check the NIC and that its driver is in the initramfs"
    )]
    NoInterface(u64),
    #[error("no interface has the MAC address {0} named by BOOTIF=")]
    NoBootif(String),
    #[error("interface {0} named by ip= does not exist")]
    NoDevice(String),
    #[error(
        "no network link came up (no carrier on {0}) within {1} s; check the cable or switch port"
    )]
    NoCarrier(String, u64),
    #[error(
        "no DHCP answer on {0} within {1} s; check that a DHCP server serves this network, or use ip= for a static address"
    )]
    DhcpTimeout(String, u64),
    #[error("configuring {what} on {nic}: {source}")]
    Kernel {
        what: &'static str,
        nic: String,
        source: io::Error,
    },
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Ethernet interfaces (everything in /sys/class/net but loopback).
pub fn nics() -> Vec<Nic> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        // type 1 is ARPHRD_ETHER
        if name == "lo" || read("type") != "1" {
            continue;
        }
        let mut mac = [0u8; 6];
        let parts: Vec<u8> = read("address")
            .split(':')
            .filter_map(|p| u8::from_str_radix(p, 16).ok())
            .collect();
        if parts.len() != 6 {
            continue;
        }
        mac.copy_from_slice(&parts);
        let Ok(index) = read("ifindex").parse() else {
            continue;
        };
        out.push(Nic { name, index, mac });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn has_carrier(nic: &Nic) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{}/carrier", nic.name))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

static SEQ: AtomicU32 = AtomicU32::new(1);

fn kernel(what: &'static str, nic: &Nic, message: impl Fn(u32) -> Vec<u8>) -> Result<(), NetError> {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    sys::netlink_request(&message(seq), seq).map_err(|source| NetError::Kernel {
        what,
        nic: nic.name.clone(),
        source,
    })
}

pub fn link_up(nic: &Nic) -> Result<(), NetError> {
    kernel("link up", nic, |seq| netlink::link_up(seq, nic.index))
}

/// Puts the lease on the kernel interface: address, then default route.
pub fn apply(lease: &Lease) -> Result<(), NetError> {
    let nic = &lease.nic;
    kernel("address", nic, |seq| {
        netlink::add_address(seq, nic.index, lease.address, lease.prefix)
    })?;
    if let Some(router) = lease.router {
        match kernel("default route", nic, |seq| {
            netlink::add_route(seq, nic.index, Ipv4Addr::UNSPECIFIED, 0, Some(router))
        }) {
            Err(NetError::Kernel { source, .. }) if source.raw_os_error() == Some(17) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Waits up to `wait` for interfaces to exist; with `bootif`, for that one.
pub fn wait_for_nics(bootif: Option<[u8; 6]>, wait: Duration) -> Result<Vec<Nic>, NetError> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let all = nics();
        let found: Vec<Nic> = match bootif {
            Some(mac) => all.into_iter().filter(|n| n.mac == mac).collect(),
            None => all,
        };
        if !found.is_empty() {
            return Ok(found);
        }
        if start.elapsed() >= wait {
            return Err(match bootif {
                Some(mac) => NetError::NoBootif(mac_text(&mac)),
                None => NetError::NoInterface(wait.as_secs()),
            });
        }
        if !said {
            log::info!("waiting up to {} s for a network interface", wait.as_secs());
            said = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Brings the network up as the command line says: a static address, or DHCP on
/// every candidate interface at once (the first lease wins).
pub fn bring_up(
    ip: &IpConfig,
    bootif: Option<[u8; 6]>,
    dhcp_timeout: Duration,
) -> Result<Lease, NetError> {
    let nics = wait_for_nics(bootif, Duration::from_secs(30))?;
    for nic in &nics {
        link_up(nic)?;
    }
    match ip {
        IpConfig::Static(s) => bring_up_static(s, &nics),
        IpConfig::Dhcp | IpConfig::Off => bring_up_dhcp(&nics, dhcp_timeout),
    }
}

fn bring_up_static(s: &StaticIp, nics: &[Nic]) -> Result<Lease, NetError> {
    let nic = match &s.device {
        Some(dev) => nics
            .iter()
            .find(|n| &n.name == dev)
            .ok_or_else(|| NetError::NoDevice(dev.clone()))?,
        None => &nics[0],
    };
    let lease = Lease {
        nic: nic.clone(),
        address: s.address,
        prefix: s.prefix,
        router: s.gateway,
        dns: s.dns.clone(),
    };
    apply(&lease)?;
    Ok(lease)
}

fn bring_up_dhcp(nics: &[Nic], timeout: Duration) -> Result<Lease, NetError> {
    // Links need a moment to negotiate after coming up.
    let start = Instant::now();
    let carrier_wait = Duration::from_secs(10).min(timeout);
    let with_carrier = loop {
        let up: Vec<Nic> = nics.iter().filter(|n| has_carrier(n)).cloned().collect();
        if !up.is_empty() || start.elapsed() >= carrier_wait {
            break up;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if with_carrier.is_empty() {
        let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
        return Err(NetError::NoCarrier(
            names.join(", "),
            carrier_wait.as_secs(),
        ));
    }
    let remaining = timeout.saturating_sub(start.elapsed());
    let done = Arc::new(AtomicBool::new(false));
    // The first interface to get a lease wins; its thread goes on renewing it.
    let (tx, rx) = std::sync::mpsc::channel::<Option<Lease>>();
    for nic in with_carrier.iter().cloned() {
        let (done, tx) = (done.clone(), tx.clone());
        std::thread::spawn(move || {
            let won = |lease: Lease| {
                if done.swap(true, Ordering::AcqRel) {
                    return false;
                }
                let _ = tx.send(Some(lease));
                true
            };
            match dhcp(&nic, remaining, &done, &won) {
                Ok(()) => {}
                Err(e) => log::warn!("DHCP on {}: {e}", nic.name),
            }
            let _ = tx.send(None);
        });
    }
    drop(tx);
    let mut ended = 0;
    let lease = loop {
        match rx.recv() {
            Ok(Some(lease)) => break Some(lease),
            Ok(None) => {
                ended += 1;
                if ended == with_carrier.len() {
                    break None;
                }
            }
            Err(_) => break None,
        }
    };
    match lease {
        Some(lease) => {
            apply(&lease)?;
            Ok(lease)
        }
        None => {
            let names: Vec<&str> = with_carrier.iter().map(|n| n.name.as_str()).collect();
            Err(NetError::DhcpTimeout(names.join(", "), timeout.as_secs()))
        }
    }
}

/// Runs DHCP on one interface until a lease, `timeout`, or `stop`. Discovers are
/// sent again with exponential backoff (1, 2, 4, 8 s, ...). A lease goes to
/// `won`; when that says this interface won, the lease is renewed here for as
/// long as the process runs (re-applied to the kernel at each renewal), so a
/// deploy that outlasts the lease keeps its address.
fn dhcp(
    nic: &Nic,
    timeout: Duration,
    stop: &AtomicBool,
    won: &dyn Fn(Lease) -> bool,
) -> io::Result<()> {
    let mut device = RawSocket::new(&nic.name, Medium::Ethernet)?;
    if let Err(e) = sys::filter_udp_dst_port(&device, 68) {
        log::warn!("filtering DHCP packets on {}: {e}", nic.name);
    }
    let config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(nic.mac)));
    let now = || smoltcp::time::Instant::now();
    let mut iface = Interface::new(config, &mut device, now());
    let mut sockets = SocketSet::new(vec![]);
    let mut socket = dhcpv4::Socket::new();
    // Our own schedule drives retransmission, so the socket's must not interfere.
    let mut retry = socket.get_retry_config();
    retry.discover_timeout = smoltcp::time::Duration::from_secs(3600);
    socket.set_retry_config(retry);
    let handle = sockets.add(socket);
    let start = Instant::now();
    let mut next_discover = Duration::ZERO;
    let mut backoff = Duration::from_secs(1);
    let mut sent = 0;
    let mut leased = false;
    loop {
        if !leased {
            if start.elapsed() >= timeout || stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if start.elapsed() >= next_discover {
                let s = sockets.get_mut::<dhcpv4::Socket>(handle);
                if sent > 0 {
                    log::info!("no DHCP answer on {} yet, asking again", nic.name);
                }
                s.reset();
                sent += 1;
                next_discover = start.elapsed() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(16));
            }
        }
        iface.poll(now(), &mut device, &mut sockets);
        match sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            Some(dhcpv4::Event::Configured(cfg)) => {
                // smoltcp sends renewals to the server from the leased address.
                iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    let _ = addrs.push(smoltcp::wire::IpCidr::Ipv4(cfg.address));
                });
                let lease = Lease {
                    nic: nic.clone(),
                    address: cfg.address.address(),
                    prefix: cfg.address.prefix_len(),
                    router: cfg.router,
                    dns: cfg.dns_servers.iter().copied().collect(),
                };
                if !leased {
                    if !won(lease) {
                        return Ok(());
                    }
                    leased = true;
                } else {
                    match apply(&lease) {
                        // smoltcp reports a renewal only when the lease changed.
                        Ok(()) => log::info!(
                            "the DHCP lease on {} changed: {}/{}",
                            nic.name,
                            lease.address,
                            lease.prefix
                        ),
                        Err(e) => log::warn!("applying the renewed lease: {e}"),
                    }
                }
            }
            Some(dhcpv4::Event::Deconfigured) if leased => {
                iface.update_ip_addrs(|addrs| addrs.clear());
                log::error!(
                    "the DHCP lease on {} ran out and was not renewed; the address may be given to another machine",
                    nic.name
                );
            }
            _ => {}
        }
        let delay = iface
            .poll_delay(now(), &sockets)
            .map(|d| d.min(smoltcp::time::Duration::from_millis(200)))
            .unwrap_or(smoltcp::time::Duration::from_millis(200));
        smoltcp::phy::wait(device.as_raw_fd(), Some(delay))?;
    }
}
