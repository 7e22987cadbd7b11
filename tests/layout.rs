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
    "src/capture",
    "src/footprint.rs",
    "src/generalize.rs",
    "src/inspect.rs",
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

/// The first path segment of every item of every `prefix...}` group in
/// `text` (`use super::{a, b::C, d::{e, f}}` gives a, b and d).
fn grouped_imports(text: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        let (mut depth, mut item, mut first) = (1, String::new(), true);
        for c in rest.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => break,
                '}' => depth -= 1,
                ',' if depth == 1 => {
                    found.push(std::mem::take(&mut item));
                    first = true;
                    continue;
                }
                _ => {}
            }
            if depth == 1 && first {
                if c == ':' {
                    first = false;
                } else if !c.is_whitespace() {
                    item.push(c);
                }
            }
        }
        found.push(item);
    }
    found.retain(|i| !i.is_empty());
    found
}

/// The sibling modules of a directory `dir` (its files and folders other than
/// mod.rs) and which of them each one names (`super::x`, or its full path).
fn sibling_edges(dir: &Path, module_path: &str) -> Vec<(String, Vec<String>)> {
    let mut siblings = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name != "mod" && (path.is_dir() || path.extension().is_some_and(|e| e == "rs")) {
            siblings.push((name, path));
        }
    }
    let names: Vec<String> = siblings.iter().map(|(n, _)| n.clone()).collect();
    siblings
        .iter()
        .map(|(name, path)| {
            let files = if path.is_dir() {
                sources(
                    &path
                        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                        .unwrap()
                        .to_string_lossy(),
                )
            } else {
                vec![path.clone()]
            };
            let text: String = files.iter().map(|f| code(f)).collect();
            let grouped = grouped_imports(&text, "super::{");
            let named = names
                .iter()
                .filter(|other| *other != name)
                .filter(|other| {
                    text.contains(&format!("super::{other}::"))
                        || text.contains(&format!("super::{other};"))
                        || text.contains(&format!("crate::{module_path}{other}::"))
                        || grouped.contains(other)
                })
                .cloned()
                .collect();
            (name.clone(), named)
        })
        .collect()
}

#[test]
fn no_module_imports_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![(root.clone(), String::new())];
    while let Some((dir, module_path)) = dirs.pop() {
        let edges = sibling_edges(&dir, &module_path);
        // Depth-first: a sibling met again on the current path is a circle.
        fn visit(
            node: &str,
            edges: &[(String, Vec<String>)],
            path: &mut Vec<String>,
            done: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|n| n == node) {
                let mut circle = path[at..].to_vec();
                circle.push(node.to_string());
                return Some(circle);
            }
            if done.iter().any(|n| n == node) {
                return None;
            }
            path.push(node.to_string());
            let next = edges
                .iter()
                .find(|(n, _)| n == node)
                .map(|(_, e)| e.clone());
            for n in next.unwrap_or_default() {
                if let Some(circle) = visit(&n, edges, path, done) {
                    return Some(circle);
                }
            }
            path.pop();
            done.push(node.to_string());
            None
        }
        let mut done = Vec::new();
        for (name, _) in &edges {
            let circle = visit(name, &edges, &mut Vec::new(), &mut done);
            assert!(
                circle.is_none(),
                "modules of {} import each other in a circle: {}; move what they share into one of them or their parent",
                dir.display(),
                circle.unwrap_or_default().join(" -> ")
            );
        }
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                let name = entry.file_name().to_string_lossy().to_string();
                dirs.push((entry.path(), format!("{module_path}{name}::")));
            }
        }
    }
}
