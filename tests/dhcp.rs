//! DHCP leases in the deploy environment: against a DHCP server this test plays
//! (QEMU's NIC sends its frames here as UDP datagrams, `qemu/run --net dgram`,
//! and the test answers ARP and DHCP with a lease of a few seconds), and against
//! Debian's dnsmasq in a network namespace with its shortest lease, two minutes,
//! outlasted by a deploy over a slow link. (QEMU's own user network leases for a
//! day, which no test can outlast.)

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

/// A network namespace holding a tap device for QEMU with the server's address,
/// removed (with everything running in it) on drop.
struct Namespace {
    name: String,
    dnsmasq: Option<std::process::Child>,
}

const TAP: &str = "tap0";

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespace {
    fn new(name: String) -> Namespace {
        // A namespace left by an earlier run that was killed.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        ip(&["netns", "add", &name]);
        let ns = Namespace {
            name,
            dnsmasq: None,
        };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "tuntap", "add", "dev", TAP, "mode", "tap"]);
        ip(&["-n", n, "addr", "add", "10.9.0.1/24", "dev", TAP]);
        ip(&["-n", n, "link", "set", TAP, "up"]);
        ns
    }

    fn exec(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Limits what goes to the guest to `kbit` per second (token bucket).
    fn shape(&self, kbit: u64) {
        let rate = format!("{kbit}kbit");
        let out = self
            .exec("tc")
            .args(["qdisc", "add", "dev", TAP, "root", "tbf", "rate", &rate])
            .args(["burst", "16kb", "latency", "2s"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Debian's dnsmasq as the DHCP server (no DNS), logging each exchange.
    fn dnsmasq(&mut self, dir: &std::path::Path, lease: &str) -> std::path::PathBuf {
        let log = dir.join("dnsmasq.log");
        let child = self
            .exec("dnsmasq")
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0"])
            .args(["--interface", TAP, "--bind-interfaces", "--no-ping"])
            .arg(format!(
                "--dhcp-range=10.9.0.50,10.9.0.60,255.255.255.0,{lease}"
            ))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg(format!("--log-facility={}", log.display()))
            .args(["--log-dhcp", "--user=root", "--group=root"])
            .spawn()
            .expect("starting dnsmasq");
        self.dnsmasq = Some(child);
        log
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A deploy over a link slow enough that it outlasts half of dnsmasq's shortest
/// lease (two minutes): the deploy environment renews the one lease it got from
/// an unmodified DHCP server and the deploy completes on it. (Before, the lease
/// was never renewed, and the address could go to another machine mid-deploy.)
#[test]
fn a_dnsmasq_lease_is_renewed_during_a_slow_deploy() {
    require_qemu!();
    require_netns!();
    let repo = Repo::new();
    let a = artifacts();
    let digest = add(&repo, "os:v1", &a.path("os-v1.img"));
    let stored: u64 = chunk_files(&repo)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let mut ns = Namespace::new(format!("imprint-dhcp-{}", std::process::id()));
    // The chunks take about 100 s at this rate: the renewal is due at 60 s.
    let kbit = (stored * 8 / 1000 / 100).max(64);
    ns.shape(kbit);
    let log = ns.dnsmasq(repo.dir.path(), "2m");
    let _served = Served::start_in_netns(&ns.name, &repo.path(), "10.9.0.1:8080");
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 256 << 20);
    let (status, console) = boot(
        repo.dir.path(),
        "slow-link",
        Boot {
            append: Some(
                "console=ttyS0 quiet panic=-1 imprint.repo=http://10.9.0.1:8080 imprint.image=os:v1 imprint.disk=/dev/vda"
                    .to_string(),
            ),
            net: &format!("tap:{TAP}"),
            netns: Some(&ns.name),
            timeout: 420,
            ..Boot::default()
        },
        &[&disk],
    );
    drop(ns);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let (discovers, acks) = (count("DHCPDISCOVER("), count("DHCPACK("));
    assert!(status.success(), "{status:?}\n{console}");
    assert_has(&console, "deploy complete");
    let seconds: f64 = console
        .lines()
        .find(|l| l.contains("deploy complete:"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("seconds="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        seconds >= 60.0,
        "the deploy took {seconds} s at {kbit} kbit/s, not long enough for a renewal\n{console}"
    );
    // One exchange for the lease, then renewals of it (an ACK each) until the
    // deploy environment handed off; none after: QEMU ends with the guest.
    assert_eq!(discovers, 1, "{log}\n{console}");
    assert!(acks >= 2, "no renewal in {seconds} s:\n{log}\n{console}");
    assert!(!console.contains("ran out"), "{console}");
    let image = read_file(&a.path("os-v1.img"));
    check_deployed_disk(&disk, &image, &digest, None);
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "dnsmasq, 2-minute lease: the deploy took {seconds:.0} s at {kbit} kbit/s; {} renewal(s) of the one lease",
        acks - 1
    );
}
