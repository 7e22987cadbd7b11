//! DHCP leases in the deploy environment, against a DHCP server this test plays:
//! QEMU's NIC sends its frames here as UDP datagrams (`qemu/run --net dgram`),
//! and this test answers ARP and DHCP with a lease of a few seconds. (QEMU's own
//! user network leases for a day, which no test can outlast.)

mod common;

use common::vm::*;
use common::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    UdpPacket, UdpRepr,
};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SERVER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const SERVER_IP: Ipv4Address = Ipv4Address::new(10, 9, 0, 1);
const CLIENT_IP: Ipv4Address = Ipv4Address::new(10, 9, 0, 50);

#[derive(Default, Debug)]
struct Seen {
    discovers: u32,
    /// Requests in the selecting state (no client address yet).
    requests: u32,
    /// Requests from the leased address: renewals.
    renewals: u32,
}

/// One Ethernet frame carrying `dhcp` from the server to `to` (an address and
/// a MAC).
fn dhcp_frame(dhcp: &DhcpRepr, to: (Ipv4Address, EthernetAddress)) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let udp = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };
    let udp_len = 8 + dhcp.buffer_len();
    let ip = Ipv4Repr {
        src_addr: SERVER_IP,
        dst_addr: to.0,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: SERVER_MAC,
        dst_addr: to.1,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0u8; 14 + ip.buffer_len() + udp_len];
    let mut e = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut e);
    let mut i = Ipv4Packet::new_unchecked(e.payload_mut());
    ip.emit(&mut i, &caps);
    let mut u = UdpPacket::new_unchecked(i.payload_mut());
    udp.emit(
        &mut u,
        &SERVER_IP.into(),
        &to.0.into(),
        dhcp.buffer_len(),
        |payload| {
            let mut d = DhcpPacket::new_unchecked(payload);
            dhcp.emit(&mut d).unwrap();
        },
        &caps,
    );
    frame
}

/// Answers ARP for the server's address and DHCP with `lease` seconds, on the
/// frames QEMU sends to `socket`, until `stop`.
fn play_the_network(socket: UdpSocket, lease: u32, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, qemu)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(eth) = EthernetFrame::new_checked(&buf[..n]) else {
            continue;
        };
        let reply = match eth.ethertype() {
            EthernetProtocol::Arp => {
                let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
                    continue;
                };
                match ArpRepr::parse(&arp) {
                    Ok(ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Request,
                        source_hardware_addr,
                        source_protocol_addr,
                        target_protocol_addr,
                        ..
                    }) if target_protocol_addr == SERVER_IP => {
                        let answer = ArpRepr::EthernetIpv4 {
                            operation: ArpOperation::Reply,
                            source_hardware_addr: SERVER_MAC,
                            source_protocol_addr: SERVER_IP,
                            target_hardware_addr: source_hardware_addr,
                            target_protocol_addr: source_protocol_addr,
                        };
                        let eth = EthernetRepr {
                            src_addr: SERVER_MAC,
                            dst_addr: source_hardware_addr,
                            ethertype: EthernetProtocol::Arp,
                        };
                        let mut frame = vec![0u8; 14 + answer.buffer_len()];
                        let mut e = EthernetFrame::new_unchecked(&mut frame[..]);
                        eth.emit(&mut e);
                        answer.emit(&mut ArpPacket::new_unchecked(e.payload_mut()));
                        frame
                    }
                    _ => continue,
                }
            }
            EthernetProtocol::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    continue;
                };
                if ip.next_header() != IpProtocol::Udp {
                    continue;
                }
                let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                    continue;
                };
                if udp.dst_port() != 67 {
                    continue;
                }
                let Ok(packet) = DhcpPacket::new_checked(udp.payload()) else {
                    continue;
                };
                let Ok(request) = DhcpRepr::parse(&packet) else {
                    continue;
                };
                let message_type = match request.message_type {
                    DhcpMessageType::Discover => {
                        seen.lock().unwrap().discovers += 1;
                        DhcpMessageType::Offer
                    }
                    DhcpMessageType::Request => {
                        let mut s = seen.lock().unwrap();
                        if request.client_ip == CLIENT_IP {
                            s.renewals += 1;
                        } else {
                            s.requests += 1;
                        }
                        DhcpMessageType::Ack
                    }
                    _ => continue,
                };
                let answer = DhcpRepr {
                    message_type,
                    transaction_id: request.transaction_id,
                    secs: 0,
                    client_hardware_address: request.client_hardware_address,
                    client_ip: request.client_ip,
                    your_ip: CLIENT_IP,
                    server_ip: SERVER_IP,
                    router: None,
                    subnet_mask: Some(Ipv4Address::new(255, 255, 255, 0)),
                    relay_agent_ip: Ipv4Address::UNSPECIFIED,
                    broadcast: false,
                    requested_ip: None,
                    client_identifier: None,
                    server_identifier: Some(SERVER_IP),
                    parameter_request_list: None,
                    dns_servers: None,
                    max_size: None,
                    lease_duration: Some(lease),
                    renew_duration: None,
                    rebind_duration: None,
                    additional_options: &[],
                };
                let to = if request.client_ip == CLIENT_IP {
                    (CLIENT_IP, request.client_hardware_address)
                } else {
                    (Ipv4Address::BROADCAST, EthernetAddress::BROADCAST)
                };
                dhcp_frame(&answer, to)
            }
            _ => continue,
        };
        let _ = socket.send_to(&reply, qemu);
    }
}

/// A lease of 6 seconds: the deploy environment renews it while the deploy goes
/// on (here: waiting on a repository that never answers), so it is never lost.
/// (Before, the lease ran out and was never renewed.)
#[test]
fn the_lease_is_renewed_while_the_deploy_runs() {
    require_qemu!();
    let repo = Repo::new();
    let network = UdpSocket::bind("127.0.0.1:0").unwrap();
    let remote = network.local_addr().unwrap().port();
    let local = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let player = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || play_the_network(network, 6, seen, stop))
    };
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 64 << 20);
    let net = format!("dgram:{local}:{remote}");
    let (_, console) = boot(
        repo.dir.path(),
        "renewing",
        Boot {
            append: Some(cmdline(
                "http://10.9.0.1:8080",
                "imprint.image=os:v1 imprint.dhcp-timeout=30",
            )),
            net: &net,
            timeout: 35,
            ..Boot::default()
        },
        &[&disk],
    );
    stop.store(true, Ordering::Relaxed);
    player.join().unwrap();
    let seen = seen.lock().unwrap();
    assert_has(&console, "network up on ");
    assert_has(&console, "10.9.0.50/24");
    // One lease, renewed (at half its time) again and again, never lost.
    assert_eq!(
        (seen.discovers, seen.requests),
        (1, 1),
        "{seen:?}\n{console}"
    );
    assert!(seen.renewals >= 3, "{seen:?}\n{console}");
    assert!(!console.contains("ran out"), "{console}");
}
