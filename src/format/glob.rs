//! fnmatch-style globs (`*`, `?`, `[...]` classes), as modprobe matches module
//! aliases and as migration lists name files.

/// fnmatch-style matching as modprobe does it: `*`, `?` and `[...]` classes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], text[t])
                        && matched
                    {
                        p += next;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches a path as fnmatch does with FNM_PATHNAME: component by component, so
/// no `*`, `?` or class ever matches a `/` and a pattern names entries of its own
/// directories only. (A `/` inside a class therefore never matches.)
pub fn glob_match_path(pattern: &str, path: &str) -> bool {
    pattern.split('/').count() == path.split('/').count()
        && pattern
            .split('/')
            .zip(path.split('/'))
            .all(|(p, t)| glob_match(p.as_bytes(), t.as_bytes()))
}

/// Matches one byte against a `[...]` class at the start of `pattern`; returns
/// whether it matched and the class's length, or `None` if the class is unclosed.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            if (pattern[i]..=pattern[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if pattern[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("a*c", "abbbc"));
        assert!(!m("a*c", "abbb"));
        assert!(m("a?c", "abc"));
        assert!(m("x[0-9]y", "x5y"));
        assert!(!m("x[!0-9]y", "x5y"));
        assert!(m("x[]]y", "x]y"));
        assert!(!m("x[0-9", "x5"));
        assert!(m(
            "usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*",
            "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
    }

    #[test]
    fn path_globs_stay_in_their_directory() {
        assert!(glob_match_path(
            "/etc/ssh/ssh_host_*",
            "/etc/ssh/ssh_host_rsa_key"
        ));
        assert!(glob_match_path("/etc/*/a?c", "/etc/x/abc"));
        for path in [
            "/etc/ssh/ssh_host_a/b",
            "/etc/ssh/ssh_host_x/../../shadow",
            "/etc/ssh/ssh_host_/",
        ] {
            assert!(!glob_match_path("/etc/ssh/ssh_host_*", path), "{path}");
        }
        assert!(!glob_match_path("/etc/a?b", "/etc/a/b"));
        assert!(!glob_match_path("/etc/a[/]b", "/etc/a/b"));
        assert!(!glob_match_path("/etc/*", "/etc"));
    }
}
