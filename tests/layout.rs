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

/// The shared core: what every role builds on.
const CORE: &[&str] = &[
    "src/format",
    "src/source",
    "src/engine",
    "src/statepart.rs",
    "src/bootswitch.rs",
    "src/footprint.rs",
    "src/migrate.rs",
    "src/parallel.rs",
    "src/sys",
];

/// The roles, side by side over the core: the host (repositories, the
/// provisioning server, media), PID 1 of the deploy environment, and the
/// installed OS's agent.
const ROLES: &[&str] = &["host", "pid1", "installed"];

/// Over the core and the roles: the command line (which may use them all) and
/// the crate roots.
const ENTRY: &[&str] = &["src/cli", "src/main.rs", "src/lib.rs"];

#[test]
fn every_source_is_core_a_role_or_the_command_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("src")).unwrap().flatten() {
        let name = format!("src/{}", entry.file_name().to_string_lossy());
        let role = ROLES.iter().any(|r| name == format!("src/{r}"));
        assert!(
            role || CORE.contains(&name.as_str()) || ENTRY.contains(&name.as_str()),
            "{name} is neither in the core, a role, nor the command line: add it to one of \
             CORE, ROLES or ENTRY in tests/layout.rs"
        );
    }
}

#[test]
fn the_shared_core_does_not_depend_on_a_role() {
    assert_none(
        CORE,
        &[
            "crate::host",
            "crate::pid1",
            "crate::installed",
            "crate::cli",
        ],
        "the shared core must not depend on the host, PID 1 or installed-OS roles",
    );
}

#[test]
fn a_role_does_not_import_another_role() {
    for role in ROLES {
        let others: Vec<String> = ROLES
            .iter()
            .chain(&["cli"])
            .filter(|r| *r != role)
            .map(|r| format!("crate::{r}"))
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        assert_none(
            &[&format!("src/{role}")],
            &others,
            "roles meet only in the core: move what two roles share into it",
        );
    }
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
    let sys = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sys");
    for path in sources("src") {
        if path.starts_with(&sys) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("unsafe ") && !code.contains("unsafe{"),
                "{}:{}: unsafe code belongs in src/sys/",
                path.display(),
                i + 1
            );
        }
    }
}
