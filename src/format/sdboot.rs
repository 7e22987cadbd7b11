//! The entry systemd-boot would start, chosen as systemd-boot (252, Debian 12's)
//! chooses it: Boot Loader Specification type #1 entries (`/loader/entries/*.conf`
//! on the ESP and the XBOOTLDR partition) and type #2 entries (unified kernel
//! images in `/EFI/Linux/`, described by their `.osrel` section), sorted
//! (entries with no tries left last; entries with a sort key first, by sort key,
//! machine ID and version, newest first; then by ID, newest first), then the
//! first one a one-shot choice, the default choice the OS saved, or `default` in
//! `loader.conf` names, else the first. Every file here comes from a disk:
//! callers bound what they read; odd paths and entries for other machines are
//! left out.

use super::glob::glob_match;
use std::cmp::Ordering;

/// What an entry starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A kernel and its initrds (type #1 `linux`).
    Linux { linux: String, initrds: Vec<String> },
    /// A unified kernel image (type #2, or type #1 `uki`).
    Uki { path: String },
    /// Another EFI program (type #1 `efi`): nothing the deploy environment can
    /// start by kexec.
    Efi { path: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The file name, lower-cased, as `default` patterns match it.
    pub id: String,
    /// GPT partition number of the file system that holds the entry's files.
    pub partition: u32,
    pub kind: Kind,
    /// The command line (type #1 `options`; a UKI's `.cmdline`).
    pub options: String,
    pub sort_key: Option<String>,
    pub machine_id: Option<String>,
    pub version: Option<String>,
    pub title: Option<String>,
    /// Boot counting (`NAME+LEFT[-DONE].conf`).
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

/// Longest command line kept (the kernel's own limit on x86).
const MAX_OPTIONS: usize = 2048;

/// A path on the entry's partition: printable, no `..`, made absolute.
fn path(word: &str) -> Option<String> {
    let word = word.replace('\\', "/");
    let word = if word.starts_with('/') {
        word
    } else {
        format!("/{word}")
    };
    (word.len() <= 1024
        && word.bytes().all(|b| b.is_ascii_graphic())
        && !word.split('/').any(|s| s == ".."))
    .then_some(word)
}

/// Boot counting in a file name's stem: `+LEFT` or `+LEFT-DONE` at its end.
fn tries(stem: &str) -> (Option<u32>, Option<u32>) {
    let Some((_, counter)) = stem.rsplit_once('+') else {
        return (None, None);
    };
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l, Some(d)),
        None => (counter, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || done.is_some_and(|d| !digits(d)) {
        return (None, None);
    }
    (
        left.parse().ok(),
        Some(done.map_or(Some(0), |d| d.parse().ok()).unwrap_or(0)),
    )
}

fn stem<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(suffix.len())?;
    name.get(cut..)?
        .eq_ignore_ascii_case(suffix)
        .then(|| &name[..cut])
}

/// A type #1 entry from its file `name` (in `/loader/entries/`) on partition
/// `partition`; `None` for entries systemd-boot skips (another architecture,
/// nothing to start, `auto-` names).
pub fn type1(name: &str, partition: u32, text: &str) -> Option<Entry> {
    let stem = stem(name, ".conf")?;
    if name.starts_with("auto-") || name.starts_with('.') {
        return None;
    }
    let mut linux = None;
    let mut uki = None;
    let mut efi = None;
    let mut initrds = Vec::new();
    let mut options: Vec<&str> = Vec::new();
    let (mut sort_key, mut machine_id, mut version, mut title) = (None, None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(|c: char| c.is_ascii_whitespace()) else {
            continue;
        };
        let value = value.trim();
        match key {
            "title" => title = Some(value.to_string()),
            "sort-key" => sort_key = Some(value.to_string()),
            "version" => version = Some(value.to_string()),
            "machine-id" => machine_id = Some(value.to_string()),
            "linux" => linux = Some(path(value)?),
            "uki" => uki = Some(path(value)?),
            "efi" => efi = Some(path(value)?),
            "initrd" => initrds.push(path(value)?),
            "options" => options.push(value),
            "architecture" if !value.eq_ignore_ascii_case("x64") => return None,
            _ => {}
        }
    }
    let kind = match (linux, uki, efi) {
        (Some(linux), _, _) => Kind::Linux { linux, initrds },
        (None, Some(path), _) => Kind::Uki { path },
        (None, None, Some(path)) => Kind::Efi { path },
        _ => return None,
    };
    let options = options.join(" ");
    if options.len() > MAX_OPTIONS || !options.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return None;
    }
    let (tries_left, tries_done) = tries(stem);
    Some(Entry {
        id: name.to_ascii_lowercase(),
        partition,
        kind,
        options,
        sort_key,
        machine_id,
        version,
        title,
        tries_left,
        tries_done,
    })
}

/// A value of an os-release file: unquoted, as systemd reads it.
fn osrel_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().rev().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        if k != key {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

/// A type #2 entry: the UKI `name` in `/EFI/Linux/` on partition `partition`,
/// with its `.osrel` and `.cmdline` sections (text). `None` for what
/// systemd-boot skips (no os-release naming the OS).
pub fn type2(name: &str, partition: u32, osrel: &str, cmdline: Option<&str>) -> Option<Entry> {
    let stem = stem(name, ".efi")?;
    if name.starts_with("auto-") || name.starts_with('.') {
        return None;
    }
    let get = |k| osrel_value(osrel, k);
    let title = get("PRETTY_NAME")
        .or(get("IMAGE_ID"))
        .or(get("NAME"))
        .or(get("ID"))?;
    let version = get("IMAGE_VERSION")
        .or(get("VERSION"))
        .or(get("VERSION_ID"))
        .or(get("BUILD_ID"));
    let sort_key = get("IMAGE_ID").or(get("ID"));
    let options = cmdline.unwrap_or_default();
    if options.len() > MAX_OPTIONS {
        return None;
    }
    let (tries_left, tries_done) = tries(stem);
    Some(Entry {
        id: name.to_ascii_lowercase(),
        partition,
        kind: Kind::Uki {
            path: format!("/EFI/Linux/{name}"),
        },
        options: options.to_string(),
        sort_key: sort_key.map(str::to_string),
        machine_id: None,
        version: version.map(str::to_string),
        title: Some(title.to_string()),
        tries_left,
        tries_done,
    })
}

/// The `default` pattern of a `loader.conf` (lower-cased, as systemd-boot
/// matches it), or `@saved`.
pub fn loader_conf_default(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let line = line.trim();
        let (key, value) = line.split_once(|c: char| c.is_ascii_whitespace())?;
        let value = value.trim().trim_matches('"');
        (key == "default" && !value.is_empty()).then(|| value.to_ascii_lowercase())
    })
}

/// systemd's version comparison (`strverscmp_improved`): segments of digits
/// compare as numbers and beat letters; `~` sorts before anything, even the end;
/// `-`, `^` and `.` separate; a longer string is newer.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    let valid = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.');
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        while let Some((&c, rest)) = a.split_first()
            && !valid(c)
        {
            a = rest;
        }
        while let Some((&c, rest)) = b.split_first()
            && !valid(c)
        {
            b = rest;
        }
        let (ta, tb) = (a.first() == Some(&b'~'), b.first() == Some(&b'~'));
        if ta || tb {
            // The one with the tilde is older.
            match tb.cmp(&ta) {
                Ordering::Equal => {}
                o => return o,
            }
            a = &a[1..];
            b = &b[1..];
        }
        if a.is_empty() || b.is_empty() {
            return a.cmp(b);
        }
        for sep in [b'-', b'^', b'.'] {
            let (sa, sb) = (a.first() == Some(&sep), b.first() == Some(&sep));
            if sa || sb {
                // The one with the separator here is older.
                match sb.cmp(&sa) {
                    Ordering::Equal => {}
                    o => return o,
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let letters = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        let (la, lb);
        if a.first().is_some_and(u8::is_ascii_digit) || b.first().is_some_and(u8::is_ascii_digit) {
            (la, lb) = (digits(a), digits(b));
            // A number is newer than no number.
            match (la > 0).cmp(&(lb > 0)) {
                Ordering::Equal => {}
                o => return o,
            }
            let za = a[..la].iter().take_while(|&&c| c == b'0').count();
            let zb = b[..lb].iter().take_while(|&&c| c == b'0').count();
            let (na, nb) = (&a[za..la], &b[zb..lb]);
            match na.len().cmp(&nb.len()).then_with(|| na.cmp(nb)) {
                Ordering::Equal => {}
                o => return o,
            }
        } else {
            (la, lb) = (letters(a), letters(b));
            let common = la.min(lb);
            match a[..common].cmp(&b[..common]).then(la.cmp(&lb)) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        a = &a[la..];
        b = &b[lb..];
    }
}

/// systemd-boot's menu order (the first is the default when nothing names one).
pub fn menu_order(a: &Entry, b: &Entry) -> Ordering {
    let exhausted = |e: &Entry| e.tries_left == Some(0);
    exhausted(a)
        .cmp(&exhausted(b))
        .then_with(|| a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(ka), Some(kb)) => ka
                .cmp(kb)
                // No machine ID sorts before any (a missing string is the least).
                .then_with(|| a.machine_id.cmp(&b.machine_id))
                .then_with(|| {
                    version_cmp(
                        a.version.as_deref().unwrap_or(""),
                        b.version.as_deref().unwrap_or(""),
                    )
                    .reverse()
                }),
            _ => Ordering::Equal,
        })
        .then_with(|| version_cmp(&a.id, &b.id).reverse())
        .then_with(|| match (a.tries_left, b.tries_left) {
            (Some(la), Some(lb)) => lb
                .cmp(&la)
                .then(a.tries_done.unwrap_or(0).cmp(&b.tries_done.unwrap_or(0))),
            _ => Ordering::Equal,
        })
}

/// Where the choice came from, for the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChosenBy {
    /// `LoaderEntryOneShot`: this boot only.
    OneShot,
    /// `LoaderEntryDefault` (`bootctl set-default`).
    DefaultVariable,
    /// `default` in `loader.conf` (or `@saved` and `LoaderEntryLastBooted`).
    LoaderConf,
    /// The first in the menu.
    First,
}

/// What systemd-boot's EFI variables say, where the deploy environment reads
/// them (lower-cased IDs or patterns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variables {
    pub one_shot: Option<String>,
    pub default: Option<String>,
    pub last_booted: Option<String>,
}

/// The entry systemd-boot would start: `entries` are sorted into menu order
/// here; `default` is `loader.conf`'s. Returns its index in the sorted list.
pub fn choose(
    entries: &mut [Entry],
    default: Option<&str>,
    vars: &Variables,
) -> Option<(usize, ChosenBy)> {
    entries.sort_by(menu_order);
    let find = |pattern: Option<&str>| {
        let pattern = pattern?.to_ascii_lowercase();
        entries
            .iter()
            .position(|e| glob_match(pattern.as_bytes(), e.id.as_bytes()))
    };
    if let Some(i) = find(vars.one_shot.as_deref()) {
        return Some((i, ChosenBy::OneShot));
    }
    if let Some(i) = find(vars.default.as_deref()) {
        return Some((i, ChosenBy::DefaultVariable));
    }
    let configured = match default {
        Some("@saved") => vars.last_booted.as_deref(),
        other => other,
    };
    if let Some(i) = find(configured) {
        return Some((i, ChosenBy::LoaderConf));
    }
    (!entries.is_empty()).then_some((0, ChosenBy::First))
}

/// An EFI variable holding a string (UTF-16LE, NUL-terminated), as text.
pub fn efi_string(data: &[u8]) -> Option<String> {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .take(512)
        .collect();
    let s = String::from_utf16(&units).ok()?;
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_graphic())).then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = include_str!(
        "../../tests/fixtures/uki/esp/loader/entries/4d1a0b5c6e7f48a9b0c1d2e3f4a5b6c7-6.1.0-57-amd64.conf"
    );
    const ENTRY_NAME: &str = "4d1a0b5c6e7f48a9b0c1d2e3f4a5b6c7-6.1.0-57-amd64.conf";
    const OSREL: &str = include_str!("../../tests/fixtures/uki/esp/EFI/Linux/debian.osrel");
    const LOADER_CONF: &str = include_str!("../../tests/fixtures/uki/esp/loader/loader.conf");
    const UKI_NAME: &str = "mkosi-debian-6.1.0-57-amd64.efi";

    /// The two entries mkosi's image has: kernel-install's type #1 entry and
    /// the UKI in /EFI/Linux.
    fn image_entries() -> Vec<Entry> {
        vec![
            type1(ENTRY_NAME, 1, ENTRY).unwrap(),
            type2(UKI_NAME, 1, OSREL, Some("console=ttyS0 rw")).unwrap(),
        ]
    }

    #[test]
    fn the_uki_wins_over_kernel_installs_entry_as_in_systemd_boot() {
        let mut entries = image_entries();
        let default = loader_conf_default(LOADER_CONF);
        assert_eq!(default, None, "mkosi's loader.conf names no default");
        let (i, by) = choose(&mut entries, default.as_deref(), &Variables::default()).unwrap();
        assert_eq!(by, ChosenBy::First);
        assert_eq!(
            entries[i].kind,
            Kind::Uki {
                path: format!("/EFI/Linux/{UKI_NAME}")
            }
        );
        assert_eq!(entries[i].options, "console=ttyS0 rw");
        assert_eq!(entries[i].sort_key.as_deref(), Some("debian"));
        assert_eq!(entries[i].version.as_deref(), Some("12 (bookworm)"));
        // Both sort by "debian"; the UKI names no machine ID, which sorts first.
        assert_eq!(entries[1].id, ENTRY_NAME);
    }

    #[test]
    fn kernel_installs_entry_reads_as_written() {
        let e = type1(ENTRY_NAME, 1, ENTRY).unwrap();
        let Kind::Linux { linux, initrds } = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(
            linux,
            "/4d1a0b5c6e7f48a9b0c1d2e3f4a5b6c7/6.1.0-57-amd64/linux"
        );
        assert_eq!(
            initrds,
            &["/4d1a0b5c6e7f48a9b0c1d2e3f4a5b6c7/6.1.0-57-amd64/initrd.img-6.1.0-57-amd64"]
        );
        assert!(
            e.options
                .ends_with("rw systemd.machine_id=4d1a0b5c6e7f48a9b0c1d2e3f4a5b6c7")
        );
        assert_eq!(
            e.machine_id.as_deref(),
            Some("4d1a0b5c6e7f48a9b0c1d2e3f4a5b6c7")
        );
        assert_eq!(e.version.as_deref(), Some("6.1.0-57-amd64"));
    }

    #[test]
    fn defaults_one_shots_and_saved_choices_pick_as_systemd_boot_does() {
        let mut entries = image_entries();
        let default = loader_conf_default("timeout 3\ndefault \"4D1A*\"\n").unwrap();
        let (i, by) = choose(&mut entries, Some(&default), &Variables::default()).unwrap();
        assert_eq!(
            (entries[i].id.as_str(), by),
            (ENTRY_NAME, ChosenBy::LoaderConf)
        );
        let vars = Variables {
            one_shot: Some(UKI_NAME.into()),
            default: Some(ENTRY_NAME.into()),
            last_booted: None,
        };
        let (i, by) = choose(&mut entries, Some(&default), &vars).unwrap();
        assert_eq!((entries[i].id.as_str(), by), (UKI_NAME, ChosenBy::OneShot));
        let vars = Variables {
            one_shot: Some("gone.conf".into()),
            default: Some(ENTRY_NAME.into()),
            last_booted: None,
        };
        let (i, by) = choose(&mut entries, None, &vars).unwrap();
        assert_eq!(
            (entries[i].id.as_str(), by),
            (ENTRY_NAME, ChosenBy::DefaultVariable)
        );
        let vars = Variables {
            last_booted: Some(ENTRY_NAME.into()),
            ..Variables::default()
        };
        let (i, by) = choose(&mut entries, Some("@saved"), &vars).unwrap();
        assert_eq!(
            (entries[i].id.as_str(), by),
            (ENTRY_NAME, ChosenBy::LoaderConf)
        );
        assert!(choose(&mut [], None, &Variables::default()).is_none());
    }

    #[test]
    fn newest_first_and_exhausted_tries_last() {
        let entry = |name: &str, version: &str| {
            type1(
                name,
                1,
                &format!("sort-key debian\nversion {version}\nlinux /vmlinuz\n"),
            )
            .unwrap()
        };
        let mut entries = [
            entry("a-5.conf", "5.10"),
            entry("a-10+0-3.conf", "6.9"),
            entry("a-6.conf", "6.1~rc1"),
            entry("a-7.conf", "6.1"),
            type1("old-style.conf", 1, "linux /vmlinuz\n").unwrap(),
        ];
        entries.sort_by(menu_order);
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "a-7.conf",
                "a-6.conf",
                "a-5.conf",
                "old-style.conf",
                "a-10+0-3.conf"
            ]
        );
        assert_eq!(entries[4].tries_left, Some(0));
        assert_eq!(entries[4].tries_done, Some(3));
    }

    #[test]
    fn versions_compare_as_systemd_compares_them() {
        use Ordering::*;
        for (a, b, o) in [
            ("6.1.0-57-amd64", "6.1.0-9-amd64", Greater),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0.1", Less),
            ("1.0-1", "1.0.1", Less),
            ("123a", "123b", Less),
            ("1a", "1", Greater),
            ("007", "7", Equal),
            ("abc", "abcd", Less),
            ("", "1", Less),
            ("1.2", "1.2", Equal),
        ] {
            assert_eq!(version_cmp(a, b), o, "{a} vs {b}");
            assert_eq!(version_cmp(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn entries_for_others_or_with_odd_paths_are_left_out() {
        assert!(type1("x.conf", 1, "architecture aa64\nlinux /vmlinuz\n").is_none());
        assert!(type1("x.conf", 1, "architecture X64\nlinux /vmlinuz\n").is_some());
        assert!(type1("x.conf", 1, "linux /../../etc/passwd\n").is_none());
        assert!(type1("x.conf", 1, "title nothing to start\n").is_none());
        assert!(type1("auto-x.conf", 1, "linux /vmlinuz\n").is_none());
        assert!(type1("x.txt", 1, "linux /vmlinuz\n").is_none());
        assert!(type1("x.conf", 1, "linux /vmlinuz\noptions a\x1bb\n").is_none());
        let efi = type1("x.conf", 1, "efi \\EFI\\tool.efi\n").unwrap();
        assert_eq!(
            efi.kind,
            Kind::Efi {
                path: "/EFI/tool.efi".into()
            }
        );
        assert!(type2("x.efi", 1, "", None).is_none(), "no os-release");
        assert_eq!(efi_string(b"A\0b\0\0\0").as_deref(), Some("ab"));
        assert_eq!(efi_string(b"\0\0"), None);
    }
}
