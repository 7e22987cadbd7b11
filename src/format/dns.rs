//! DNS A-record queries and answers (RFC 1035), for resolving the repository's
//! host name in the deploy environment, where static glibc has no resolver.

use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("{0:?} is not a valid host name")]
    BadName(String),
    #[error("malformed DNS answer: {0}")]
    Malformed(&'static str),
    #[error("DNS answer is for another query")]
    WrongId,
    #[error("DNS answer is for another question")]
    WrongQuestion,
    #[error("the name server says {0:?} does not exist")]
    NoSuchName(String),
    #[error("the name server failed (rcode {0})")]
    ServerFailure(u8),
}

/// A recursive query for the A records of `name`.
pub fn query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let name = name.trim_end_matches('.');
    let bad = || DnsError::BadName(name.to_string());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // recursion desired
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad());
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // type A, class IN
    Ok(q)
}

/// Skips a (possibly compressed) name starting at `at`; returns the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DnsError> {
    loop {
        let len = *msg
            .get(at)
            .ok_or(DnsError::Malformed("name runs past the end"))?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xC0 == 0xC0 => {
                if at + 2 > msg.len() {
                    return Err(DnsError::Malformed("truncated name pointer"));
                }
                return Ok(at + 2);
            }
            l if l & 0xC0 != 0 => return Err(DnsError::Malformed("bad label type")),
            l => at += 1 + l as usize,
        }
    }
}

/// The IPv4 addresses in an answer to query `id` for `name`.
pub fn parse_answer(msg: &[u8], id: u16, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    let be16 = |at: usize| -> Result<u16, DnsError> {
        msg.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(DnsError::Malformed("truncated record"))
    };
    if be16(0)? != id {
        return Err(DnsError::WrongId);
    }
    let flags = be16(2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    match (flags & 0xF) as u8 {
        0 => {}
        3 => return Err(DnsError::NoSuchName(name.to_string())),
        rcode => return Err(DnsError::ServerFailure(rcode)),
    }
    let (questions, answers) = (be16(4)?, be16(6)?);
    // The answer must repeat our one question exactly (names compare without
    // case), so a reply to some other query cannot be taken for ours.
    let asked = query(id, name)?;
    let question = &asked[12..];
    let echoed = msg
        .get(12..12 + question.len())
        .ok_or(DnsError::WrongQuestion)?;
    if questions != 1 || !echoed.eq_ignore_ascii_case(question) {
        return Err(DnsError::WrongQuestion);
    }
    let mut at = 12 + question.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let (kind, class) = (be16(at)?, be16(at + 2)?);
        let len = be16(at + 8)? as usize;
        let data = msg
            .get(at + 10..at + 10 + len)
            .ok_or(DnsError::Malformed("record data runs past the end"))?;
        if kind == 1 && class == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u16, rcode: u8, ips: &[[u8; 4]]) -> Vec<u8> {
        let mut m = query(id, "repo.example").unwrap();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[7] = ips.len() as u8 + 1;
        // A CNAME first (skipped), then the A records, names compressed.
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 12]);
        for ip in ips {
            m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            m.extend_from_slice(ip);
        }
        m
    }

    #[test]
    fn query_layout() {
        let q = query(0x1234, "repo.example.").unwrap();
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..], b"\x04repo\x07example\x00\x00\x01\x00\x01");
        assert!(query(1, "a..b").is_err());
        assert!(query(1, &"x".repeat(64)).is_err());
    }

    #[test]
    fn answers() {
        let a = answer(9, 0, &[[10, 0, 2, 2], [10, 0, 2, 3]]);
        assert_eq!(
            parse_answer(&a, 9, "repo.example").unwrap(),
            [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)]
        );
        assert_eq!(parse_answer(&a, 8, "x"), Err(DnsError::WrongId));
        // The right id, another question.
        assert_eq!(
            parse_answer(&a, 9, "other.example"),
            Err(DnsError::WrongQuestion)
        );
        // Names compare without case.
        assert_eq!(parse_answer(&a, 9, "REPO.example").unwrap().len(), 2);
        assert!(matches!(
            parse_answer(&answer(9, 3, &[]), 9, "repo.example"),
            Err(DnsError::NoSuchName(_))
        ));
        assert_eq!(
            parse_answer(&answer(9, 2, &[]), 9, "x"),
            Err(DnsError::ServerFailure(2))
        );
        for cut in 0..a.len() {
            let _ = parse_answer(&a[..cut], 9, "repo.example");
        }
    }
}
