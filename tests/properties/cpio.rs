use super::*;
use imprint::format::cpio::*;

#[derive(Clone, Debug)]
enum Op {
    Dir(String, u32),
    File(String, u32, Vec<u8>),
    Symlink(String, String),
    Char(String, u32, u32, u32),
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-c]{1,2}(/[a-c.]{1,2}){0,3}",
        1 => ".{0,20}",
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (path(), any::<u32>()).prop_map(|(p, m)| Op::Dir(p, m)),
        (path(), any::<u32>(), vec(any::<u8>(), 0..40)).prop_map(|(p, m, d)| Op::File(p, m, d)),
        (path(), ".{0,30}").prop_map(|(p, t)| Op::Symlink(p, t)),
        (path(), any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(p, m, a, b)| Op::Char(p, m, a, b)),
    ]
}

/// One entry as a newc reader sees it.
#[derive(Debug)]
struct Read {
    name: String,
    mode: u32,
    data: Vec<u8>,
}

/// A strict newc reader: every field hex, names NUL-terminated with no NUL
/// inside, padding zero, the trailer last and nothing after it.
fn read(bytes: &[u8]) -> Result<Vec<Read>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    let padded = |n: usize| n.div_ceil(4) * 4;
    loop {
        let h = bytes.get(at..at + 110).ok_or("truncated header")?;
        if &h[..6] != b"070701" {
            return Err("bad magic".into());
        }
        let field = |i: usize| -> Result<u32, String> {
            let text = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            u32::from_str_radix(text, 16).map_err(|e| e.to_string())
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name = bytes
            .get(at + 110..at + 110 + namesize)
            .ok_or("truncated name")?;
        let (last, name) = name.split_last().ok_or("empty name")?;
        if *last != 0 || name.contains(&0) {
            return Err(format!("name {name:?} is not one NUL-terminated string"));
        }
        let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
        let end = at + padded(110 + namesize);
        if bytes
            .get(at + 110 + namesize..end)
            .is_none_or(|p| p.iter().any(|&b| b != 0))
        {
            return Err("bad name padding".into());
        }
        at = end;
        let data = bytes.get(at..at + size).ok_or("truncated data")?.to_vec();
        at += padded(size);
        if name == "TRAILER!!!" {
            return if at == bytes.len() {
                Ok(out)
            } else {
                Err("bytes after the trailer".into())
            };
        }
        out.push(Read { name, mode, data });
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn archives_are_well_formed_and_hold_what_was_added(ops in vec(op(), 0..16)) {
        let mut archive = Archive::new();
        let mut added = Vec::new();
        for op in &ops {
            let (path, result) = match op {
                Op::Dir(p, m) => (p, archive.add_dir(p, *m)),
                Op::File(p, m, d) => (p, archive.add_file(p, *m, d.clone())),
                Op::Symlink(p, t) => (p, archive.add_symlink(p, t)),
                Op::Char(p, m, a, b) => (p, archive.add_char_device(p, *m, *a, *b)),
            };
            if result.is_ok() {
                added.push(path.clone());
                prop_assert!(archive.contains(path));
            }
        }
        let mut bytes = Vec::new();
        let written = archive.write(&mut bytes).unwrap();
        prop_assert_eq!(written as usize, bytes.len());
        let entries = read(&bytes).map_err(TestCaseError::fail)?;
        prop_assert_eq!(entries.len(), archive.len());
        let mut seen = std::collections::BTreeSet::new();
        for e in &entries {
            // Parents first, each once, every path relative and clean.
            prop_assert!(seen.insert(e.name.clone()), "{} twice", e.name);
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                prop_assert!(seen.contains(parent), "{} before its parent", e.name);
            }
            prop_assert!(!e.name.starts_with('/'));
            prop_assert!(e.name.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
            prop_assert!(e.mode & 0o170000 != 0);
            if e.mode & 0o170000 == 0o040000 {
                prop_assert!(e.data.is_empty());
            }
        }
        prop_assert!(added.iter().all(|p| seen.contains(p)));
    }
}
