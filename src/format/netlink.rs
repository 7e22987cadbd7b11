//! rtnetlink messages for the few things PID 1 asks of the kernel's network
//! stack: bring a link up, add an IPv4 address, add a default route. Built as
//! bytes here; `sys` sends them. The layouts are the kernel's uapi structs
//! (nlmsghdr, ifinfomsg, ifaddrmsg, rtmsg) in native (little-endian) order.

use std::net::Ipv4Addr;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
pub const NLMSG_ERROR: u16 = 2;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_le_bytes());
    m.extend_from_slice(&kind.to_le_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(body);
    m
}

fn attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// Sets IFF_UP on interface `index`.
pub fn link_up(seq: u32, index: u32) -> Vec<u8> {
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&(index as i32).to_le_bytes());
    body[8..12].copy_from_slice(&IFF_UP.to_le_bytes());
    body[12..16].copy_from_slice(&IFF_UP.to_le_bytes());
    message(RTM_NEWLINK, 0, seq, &body)
}

/// Adds (or replaces) `addr/prefix` on interface `index`.
pub fn add_address(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut body = vec![AF_INET, prefix, 0, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&index.to_le_bytes());
    attr(&mut body, IFA_LOCAL, &addr.octets());
    attr(&mut body, IFA_ADDRESS, &addr.octets());
    if prefix < 31 {
        let host_bits = u32::MAX.checked_shr(prefix as u32).unwrap_or(0);
        let broadcast = Ipv4Addr::from(u32::from(addr) | host_bits);
        attr(&mut body, IFA_BROADCAST, &broadcast.octets());
    }
    message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq, &body)
}

/// Adds a route to `dst/prefix` via `gateway` (or on-link when `None`) out of `index`.
pub fn add_route(
    seq: u32,
    index: u32,
    dst: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Vec<u8> {
    let scope = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let mut body = vec![
        AF_INET,
        prefix,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_le_bytes());
    if prefix > 0 {
        attr(&mut body, RTA_DST, &dst.octets());
    }
    if let Some(gw) = gateway {
        attr(&mut body, RTA_GATEWAY, &gw.octets());
    }
    attr(&mut body, RTA_OIF, &index.to_le_bytes());
    message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq, &body)
}

/// Reads the kernel's answer to request `seq`: `Ok(0)` for success, `Ok(errno)` for
/// a refusal, `Err` when the bytes are not a well-formed acknowledgement.
pub fn parse_ack(reply: &[u8], seq: u32) -> Result<i32, &'static str> {
    let mut at = 0;
    while at + 16 <= reply.len() {
        let len = u32::from_le_bytes(reply[at..at + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_le_bytes([reply[at + 4], reply[at + 5]]);
        let msg_seq = u32::from_le_bytes(reply[at + 8..at + 12].try_into().unwrap_or_default());
        if len < 16 || at + len > reply.len() {
            return Err("truncated netlink message");
        }
        if kind == NLMSG_ERROR && msg_seq == seq {
            if len < 20 {
                return Err("short netlink error message");
            }
            let code = i32::from_le_bytes(reply[at + 16..at + 20].try_into().unwrap_or_default());
            // The kernel sends -errno; i32::MIN is no errno and has no negation.
            return code.checked_neg().ok_or("netlink error code out of range");
        }
        at += len.div_ceil(4) * 4;
    }
    Err("no acknowledgement in the netlink reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_up_layout() {
        let m = link_up(7, 3);
        assert_eq!(m.len(), 32);
        assert_eq!(&m[0..4], &32u32.to_le_bytes());
        assert_eq!(&m[4..6], &RTM_NEWLINK.to_le_bytes());
        assert_eq!(&m[8..12], &7u32.to_le_bytes());
        assert_eq!(&m[20..24], &3i32.to_le_bytes());
        assert_eq!(&m[24..28], &1u32.to_le_bytes());
        assert_eq!(&m[28..32], &1u32.to_le_bytes());
    }

    #[test]
    fn address_and_route_attributes() {
        let m = add_address(1, 2, Ipv4Addr::new(10, 0, 2, 15), 24);
        // header 16 + ifaddrmsg 8 + three 8-byte attributes
        assert_eq!(m.len(), 16 + 8 + 24);
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(&m[24..32], &[8, 0, 2, 0, 10, 0, 2, 15]);
        assert_eq!(&m[40..48], &[8, 0, 4, 0, 10, 0, 2, 255]);

        let r = add_route(
            2,
            2,
            Ipv4Addr::UNSPECIFIED,
            0,
            Some(Ipv4Addr::new(10, 0, 2, 2)),
        );
        assert_eq!(r.len(), 16 + 12 + 8 + 8);
        assert_eq!(&r[28..36], &[8, 0, 5, 0, 10, 0, 2, 2]);
        assert_eq!(&r[36..44], &[8, 0, 4, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn acks() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_le_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_le_bytes());
        ack[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(parse_ack(&ack, 5), Ok(0));
        ack[16..20].copy_from_slice(&(-17i32).to_le_bytes());
        assert_eq!(parse_ack(&ack, 5), Ok(17));
        assert!(parse_ack(&ack, 6).is_err());
        assert!(parse_ack(&ack[..10], 5).is_err());
        ack[0..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse_ack(&ack, 5).is_err());
    }

    #[test]
    fn an_error_code_without_a_negation_is_refused() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_le_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_le_bytes());
        ack[8..12].copy_from_slice(&5u32.to_le_bytes());
        ack[16..20].copy_from_slice(&i32::MIN.to_le_bytes());
        assert_eq!(parse_ack(&ack, 5), Err("netlink error code out of range"));
    }
}
