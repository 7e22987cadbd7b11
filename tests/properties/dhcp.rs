//! The DHCP client is smoltcp's; its packet parser still reads bytes anyone
//! on the segment can send, so it is held to the same properties.
use super::*;
use smoltcp::wire::{DhcpPacket, DhcpRepr};
use std::net::Ipv4Addr;

/// What an ACK gives: address, router, name servers, lease time.
#[derive(Clone, Debug, PartialEq)]
struct Lease {
    address: Ipv4Addr,
    router: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    seconds: Option<u32>,
}

fn lease(dns: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Lease> {
    (ipv4(), ipv4(), vec(ipv4(), dns), any::<u32>()).prop_map(|(address, router, dns, seconds)| {
        Lease {
            address,
            router: Some(router),
            dns,
            seconds: Some(seconds),
        }
    })
}

/// A server's ACK for `xid`: BOOTP header, magic cookie, options.
fn ack(xid: u32, mac: [u8; 6], lease: &Lease, prefix: u8, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 2; // reply
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[16..20].copy_from_slice(&lease.address.octets());
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
    let router = lease.router.unwrap_or(Ipv4Addr::UNSPECIFIED).octets();
    let mut option = |code: u8, data: &[u8]| {
        p.push(code);
        p.push(data.len() as u8);
        p.extend_from_slice(data);
    };
    option(53, &[5]);
    option(54, &router);
    option(51, &lease.seconds.unwrap_or(0).to_be_bytes());
    option(1, &mask.to_be_bytes());
    option(3, &router);
    let servers: Vec<u8> = lease.dns.iter().flat_map(|a| a.octets()).collect();
    option(6, &servers);
    for (code, data) in extra {
        option(*code, data);
    }
    p.push(255);
    p
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn parse(bytes: &[u8]) -> Option<Lease> {
    let packet = DhcpPacket::new_checked(bytes).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    Some(Lease {
        address: repr.your_ip,
        router: repr.router,
        dns: repr
            .dns_servers
            .map(|d| d.iter().copied().collect())
            .unwrap_or_default(),
        seconds: repr.lease_duration,
    })
}

/// Options the ACK's own do not depend on. (A client identifier of a
/// hardware type other than Ethernet makes smoltcp refuse the packet.)
fn extra() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    vec((1u8..=254, vec(any::<u8>(), 0..12)), 0..4).prop_map(|v| {
        v.into_iter()
            .filter(|(c, _)| ![1, 3, 6, 51, 53, 54, 61].contains(c))
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn acks_give_their_lease(
        xid in any::<u32>(),
        mac in any::<[u8; 6]>(),
        lease in lease(1..=3),
        prefix in 0u8..=32,
        extra in extra(),
    ) {
        let p = ack(xid, mac, &lease, prefix, &extra);
        prop_assert_eq!(parse(&p), Some(lease));
    }

    #[test]
    fn mutated_acks_never_panic(
        xid in any::<u32>(),
        lease in lease(0..=3),
        extra in extra(),
        ms in mutations(),
    ) {
        let p = mutate(&ack(xid, [2; 6], &lease, 24, &extra), &ms);
        let _ = bounded(p.len(), || parse(&p));
    }

    #[test]
    fn arbitrary_packets_never_panic(bytes in bytes()) {
        let _ = bounded(bytes.len(), || parse(&bytes));
    }
}
