use super::*;
use imprint::host::statuses::*;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};

fn event() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof!["[!-~]{1,20}", ".{0,10}", Just("m1".to_string())];
    (
        prop::option::of(name),
        "[a-z-]{1,12}",
        prop::option::of(any::<u64>()),
        ".{0,200}",
    )
        .prop_map(|(target, phase, done, pad)| {
            let mut map = serde_json::Map::new();
            if let Some(t) = target {
                map.insert("target".into(), t.into());
            }
            map.insert("phase".into(), phase.into());
            if let Some(d) = done {
                map.insert("done".into(), d.into());
            }
            map.insert("pad".into(), pad.into());
            Value::Object(map).to_string().into_bytes()
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => event(),
        2 => (event(), mutations()).prop_map(|(e, ms)| mutate(&e, &ms)),
        1 => bytes(),
        1 => (1usize..200).prop_map(|depth| {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }),
    ]
}

/// Bytes the table says it holds, counted again from what it shows.
fn held(t: &StatusTable) -> usize {
    let Value::Object(latest) = t.latest() else {
        return 0;
    };
    let mut total = 0;
    for name in latest.keys() {
        let Some(Value::Array(events)) = t.history(name) else {
            continue;
        };
        total += events
            .iter()
            .map(|e| e.to_string().len() + name.len())
            .sum::<usize>();
    }
    total
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_table_keeps_its_bounds_and_its_count(
        posts in vec((body(), 0u8..3, 0u64..2000, any::<bool>()), 1..40),
        max_machines in 1usize..6,
        max_bytes in 0usize..8000,
    ) {
        let mut t = StatusTable::new(max_machines, max_bytes);
        let mut now = 1_000_000;
        for (body, from, step, trusted) in posts {
            now += step;
            let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, from));
            let result = bounded(body.len(), || {
                t.post(imprint::host::statuses::parse(&body, from)?, from, now, trusted)
            });
            if let Ok(name) = result {
                prop_assert!(valid_name(&name));
                let latest = t.latest();
                prop_assert_eq!(&latest[&name]["received"], &Value::from(now));
                prop_assert_eq!(&latest[&name]["from"], &Value::from(from.to_string()));
                let history = t.history(&name).and_then(|h| h.as_array().map(Vec::len));
                prop_assert!(history.is_some_and(|n| (1..=HISTORY).contains(&n)));
            }
            prop_assert!(t.len() <= max_machines);
            prop_assert_eq!(t.bytes(), held(&t));
        }
    }
}
