//! The module structure as rules: the shared core has no edge to a role, pure
//! formats touch no device, and `unsafe` lives in `sys` alone. Read from the
//! sources, so a change that breaks a rule fails here with the file named.

use std::path::{Path, PathBuf};

fn sources(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    if root.is_dir() {
        walk(&root, &mut out);
    } else {
        out.push(root);
    }
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

/// A file's code without its `#[cfg(test)]` items (tests may use anything).
fn code(path: &Path) -> String {
    let mut text = std::fs::read_to_string(path).unwrap();
    while let Some(at) = text.find("#[cfg(test)]") {
        let Some(open) = text[at..].find('{').map(|o| at + o) else {
            break;
        };
        let mut depth = 0;
        let mut end = text.len();
        for (i, c) in text[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = open + i + 1;
                break;
            }
        }
        text.replace_range(at..end, "");
    }
    text
}

fn assert_none(dirs: &[&str], forbidden: &[&str], rule: &str) {
    for dir in dirs {
        for path in sources(dir) {
            let code = code(&path);
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{} uses {word}: {rule}",
                    path.display()
                );
            }
        }
    }
}

const CORE: &[&str] = &[
    "src/format",
    "src/source",
    "src/engine",
    "src/statepart.rs",
    "src/bootswitch.rs",
    "src/parallel.rs",
    "src/sys.rs",
];

#[test]
fn the_shared_core_does_not_depend_on_a_role() {
    assert_none(
        CORE,
        &["crate::host", "crate::pid1", "crate::installed"],
        "the shared core must not depend on the host, PID 1 or installed-OS roles",
    );
}

#[test]
fn pure_formats_touch_no_device_socket_or_file() {
    assert_none(
        &["src/format"],
        &[
            "std::fs",
            "crate::sys",
            "crate::source",
            "crate::engine",
            "TcpStream",
            "UdpSocket",
        ],
        "formats work on byte slices and Read/Write/Seek only",
    );
}

#[test]
fn unsafe_code_lives_in_sys_alone() {
    let sys = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sys.rs");
    for path in sources("src") {
        if path == sys {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("unsafe ") && !code.contains("unsafe{"),
                "{}:{}: unsafe code belongs in src/sys.rs",
                path.display(),
                i + 1
            );
        }
    }
}
