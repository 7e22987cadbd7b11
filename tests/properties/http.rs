use super::*;
use imprint::format::http::*;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}".prop_filter("not a length or coding", |n| {
        !["content-length", "transfer-encoding"].contains(&n.to_ascii_lowercase().as_str())
    })
}

/// A request head, and what it parses to.
fn head() -> impl Strategy<Value = (Vec<u8>, RequestHead)> {
    (
        prop_oneof!["GET|HEAD|POST".prop_map(String::from), "[A-Z]{1,10}"],
        "/[!-~]{0,60}",
        0u8..=1,
        vec(
            (token(), "[ \t]{0,2}[!-~]([ -~\t]{0,30}[!-~])?[ \t]{0,2}"),
            0..MAX_HEADERS,
        ),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(method, target, minor, headers, length)| {
            let mut text = format!("{method} {target} HTTP/1.{minor}\r\n");
            for (name, value) in &headers {
                text.push_str(&format!("{name}:{value}\r\n"));
            }
            let mut parsed: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            if let Some(n) = length {
                text.push_str(&format!("Content-Length: {n}\r\n"));
                if parsed.len() == MAX_HEADERS {
                    parsed.pop();
                }
                parsed.push(("content-length".into(), n.to_string()));
            }
            text.push_str("\r\n");
            let head = RequestHead {
                method: match method.as_str() {
                    "GET" => Method::Get,
                    "HEAD" => Method::Head,
                    "POST" => Method::Post,
                    "PUT" => Method::Put,
                    _ => Method::Other,
                },
                target,
                minor,
                headers: parsed,
                content_length: length.unwrap_or(0),
            };
            (text.into_bytes(), head)
        })
        .prop_filter("fits the header limit", |(_, h)| {
            h.headers.len() <= MAX_HEADERS
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn heads_parse_to_what_they_say((text, head) in head(), rest in vec(any::<u8>(), 0..32)) {
        let mut buf = text.clone();
        buf.extend_from_slice(&rest);
        prop_assert_eq!(head_end(&buf), Some(text.len()));
        if text.len() <= MAX_HEAD && head.headers.len() <= MAX_HEADERS {
            let got = parse_head(&text);
            // A Content-Length line past the limit counts as one too many.
            let has_length = text.windows(16).any(|w| w == b"Content-Length: ");
            if head.headers.len() == MAX_HEADERS && has_length {
                prop_assert!(got == Ok(head.clone()) || got == Err(HttpError::TooManyHeaders));
            } else {
                prop_assert_eq!(got, Ok(head));
            }
        }
    }

    #[test]
    fn mutated_heads_never_panic((text, _) in head(), ms in mutations()) {
        let text = mutate(&text, &ms);
        if let Ok(h) = bounded(text.len(), || parse_head(&text)) {
            prop_assert!(h.headers.len() <= MAX_HEADERS);
            prop_assert!(h.target.bytes().all(|b| b.is_ascii_graphic()));
            let _ = (h.keep_alive(), h.path(), h.query("x"));
        }
    }

    #[test]
    fn arbitrary_heads_never_panic(bytes in bytes()) {
        let _ = head_end(&bytes);
        let _ = bounded(bytes.len(), || parse_head(&bytes));
        let _ = bounded(bytes.len(), || parse_response_head(&bytes, Method::Get));
        let _ = parse_chunk_size(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_response_heads_keep_their_bounds(
        status in 100u16..600,
        length in any::<u64>(),
        chunked in any::<bool>(),
        ms in mutations(),
    ) {
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {length}")
        };
        let text = format!("HTTP/1.1 {status} Reason\r\n{framing}\r\nX-Cache: MISS\r\n\r\n");
        let good = parse_response_head(text.as_bytes(), Method::Get).unwrap();
        prop_assert_eq!(good.status, status);
        let text = mutate(text.as_bytes(), &ms);
        if let Ok(h) = bounded(text.len(), || parse_response_head(&text, Method::Get)) {
            prop_assert!(h.headers.len() <= MAX_HEADERS);
            prop_assert!((100..600).contains(&h.status));
            let _ = h.keep_alive();
        }
    }

    #[test]
    fn ranges_stay_in_the_file(
        value in ".{0,40}",
        size in interesting(),
        start in interesting(),
        end in interesting(),
    ) {
        let values = [
            value,
            format!("bytes={start}-{end}"),
            format!("bytes=-{end}"),
            format!("bytes={start}-"),
            format!(" bytes= {start} - {end} "),
        ];
        for value in values {
            if let RangeRequest::Range { start, len } = parse_range(&value, size) {
                prop_assert!(len >= 1);
                let end = start.checked_add(len);
                prop_assert!(end.is_some_and(|e| e <= size), "{} {} {}", value, start, len);
            }
        }
    }

    #[test]
    fn ranges_round_trip(size in 1u64..u64::MAX, a in any::<u64>(), b in any::<u64>()) {
        let (first, last) = (a.min(b) % size, a.max(b));
        prop_assert_eq!(
            parse_range(&format!("bytes={first}-{last}"), size),
            RangeRequest::Range { start: first, len: last.min(size - 1) - first + 1 }
        );
    }

    #[test]
    fn http_dates_round_trip_and_garbage_is_no_date(
        secs in 0u64..253_402_300_800,
        text in ".{0,40}",
        mutate in any::<(usize, u8)>(),
    ) {
        let date = http_date(secs);
        prop_assert_eq!(parse_http_date(&date), Some(secs));
        let _ = parse_http_date(&text);
        let mut bytes = date.into_bytes();
        let at = mutate.0 % bytes.len();
        bytes[at] = mutate.1;
        if let Some(t) = parse_http_date(&String::from_utf8_lossy(&bytes)) {
            prop_assert!(t < 253_402_300_800);
        }
    }

    #[test]
    fn printable_text_is_one_plain_line(text in ".{0,80}") {
        let p = printable(&text);
        prop_assert!(p.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }
}
