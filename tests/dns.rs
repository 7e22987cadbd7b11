//! The deploy environment's DNS resolver against a name server on 127.0.0.1: an
//! answer, a name that does not exist, and a server that never answers.

use imprint::source::{DnsResolver, NameResolver};
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

/// Answers every A query for `repo.example` with 10.0.2.2 and 10.0.2.7, and any
/// other name with NXDOMAIN.
fn name_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let query = &buf[..n];
            let mut answer = query.to_vec();
            answer[2] = 0x81;
            let known = query[12..].starts_with(b"\x04repo\x07example\x00");
            answer[3] = if known { 0x80 } else { 0x83 };
            if known {
                answer[7] = 2;
                for ip in [[10, 0, 2, 2], [10, 0, 2, 7]] {
                    answer.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    answer.extend_from_slice(&ip);
                }
            }
            let _ = socket.send_to(&answer, peer);
        }
    });
    addr
}

#[test]
fn resolves_names_against_the_given_server() {
    let resolver = DnsResolver {
        servers: vec![name_server()],
    };
    let found = resolver.resolve("repo.example", 8080).unwrap();
    assert_eq!(
        found,
        vec![
            "10.0.2.2:8080".parse::<SocketAddr>().unwrap(),
            "10.0.2.7:8080".parse().unwrap()
        ]
    );
    let err = resolver.resolve("nowhere.example", 80).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn a_silent_server_fails_in_bounded_time_and_a_second_server_is_tried() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = DnsResolver {
        servers: vec![silent.local_addr().unwrap(), name_server()],
    };
    assert_eq!(resolver.resolve("repo.example", 80).unwrap().len(), 2);
    let only_silent = DnsResolver {
        servers: vec![silent.local_addr().unwrap()],
    };
    let started = Instant::now();
    let err = only_silent.resolve("repo.example", 80).unwrap_err();
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(started.elapsed().as_secs() < 20);
    let none = DnsResolver { servers: vec![] };
    assert!(
        none.resolve("repo.example", 80)
            .unwrap_err()
            .to_string()
            .contains("no DNS server")
    );
}

/// Answers that are not for the query asked are not believed: a reply with
/// another id, a reply for another name, and a reply from another address all
/// come first, then the real one; the resolver returns the real one. Query ids
/// are not sequential.
#[test]
fn forged_answers_are_ignored_and_ids_are_unpredictable() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ids.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let query = buf[..n].to_vec();
            seen.lock()
                .unwrap()
                .push(u16::from_be_bytes([query[0], query[1]]));
            let answer = |id: [u8; 2], name: &[u8], ip: [u8; 4]| {
                let mut a = query.clone();
                a[..2].copy_from_slice(&id);
                a[2] = 0x81;
                a[3] = 0x80;
                a[7] = 1;
                a.truncate(12);
                a.extend_from_slice(name);
                a.extend_from_slice(&[0, 1, 0, 1]);
                a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                a.extend_from_slice(&ip);
                a
            };
            let id = [query[0], query[1]];
            let name = b"\x04repo\x07example\x00";
            let wrong_id = [id[0] ^ 0xff, id[1]];
            let _ = socket.send_to(&answer(wrong_id, name, [6, 6, 6, 1]), peer);
            let _ = socket.send_to(&answer(id, b"\x04evil\x07example\x00", [6, 6, 6, 2]), peer);
            let _ = forger.send_to(&answer(id, name, [6, 6, 6, 3]), peer);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = socket.send_to(&answer(id, name, [10, 0, 2, 2]), peer);
        }
    });
    let resolver = DnsResolver {
        servers: vec![addr],
    };
    for _ in 0..8 {
        let found = resolver.resolve("repo.example", 80).unwrap();
        assert_eq!(found, vec!["10.0.2.2:80".parse::<SocketAddr>().unwrap()]);
    }
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 8);
    let sequential = ids
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1))
        .count();
    assert!(sequential < 3, "query ids look sequential: {ids:?}");
}
