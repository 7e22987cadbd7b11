//! The boot entry an installed OS's own boot loader would start, read from its
//! configuration: a Boot Loader Specification entry, GRUB's default menu entry,
//! or SYSLINUX/EXTLINUX's default label. The deploy environment uses it to kexec
//! the installed OS when the image's manifest carries no boot facts. Every file
//! here comes from a disk, so nothing is trusted: sizes are bounded by the
//! caller, entries that use GRUB variables or odd paths are left out.

/// A kernel, its initrds and its command line, paths as the loader sees them
/// on its own partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub kernel: String,
    pub initrds: Vec<String>,
    pub options: String,
}

/// Longest command line taken (the kernel's own limit on x86).
const MAX_CMDLINE: usize = 2048;

/// A path a loader would open: absolute, printable, no `..`.
fn path(word: &str) -> Option<String> {
    let ok = word.starts_with('/')
        && word.len() <= 1024
        && word.bytes().all(|b| b.is_ascii_graphic())
        && !word.split('/').any(|s| s == "..")
        && !word.contains('$');
    ok.then(|| word.to_string())
}

/// Command-line words, without the ones that name GRUB variables (their values
/// are not known here) and within the kernel's length.
fn options<'a>(words: impl Iterator<Item = &'a str>) -> Option<String> {
    let kept: Vec<&str> = words
        .filter(|w| !w.contains('$') && w.bytes().all(|b| b.is_ascii_graphic()))
        .collect();
    let line = kept.join(" ");
    (line.len() <= MAX_CMDLINE).then_some(line)
}

/// A Boot Loader Specification entry (`/loader/entries/*.conf`).
pub fn bls(text: &str) -> Option<BootEntry> {
    let mut kernel = None;
    let mut initrds = Vec::new();
    let mut opts = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("linux") => kernel = path(words.next()?),
            Some("initrd") => initrds.push(path(words.next()?)?),
            Some("options") => opts.extend(words),
            _ => {}
        }
    }
    Some(BootEntry {
        kernel: kernel?,
        initrds,
        options: options(opts.into_iter())?,
    })
}

/// A menu item of a `grub.cfg`.
enum Item {
    Entry {
        title: String,
        entry: Option<BootEntry>,
    },
    Submenu {
        title: String,
        items: Vec<Item>,
    },
}

fn title_of(line: &str) -> String {
    line.split(['\'', '"'])
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn braces(line: &str) -> isize {
    line.matches('{').count() as isize - line.matches('}').count() as isize
}

/// The items of one menu level, up to the `}` that closes it (or the end).
fn menu<'a>(lines: &mut impl Iterator<Item = &'a str>, depth: usize) -> Vec<Item> {
    let mut items = Vec::new();
    // Deeper than any real menu: the rest is not read.
    if depth > 8 {
        return items;
    }
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with('}') {
            break;
        }
        if line.starts_with("submenu ") {
            items.push(Item::Submenu {
                title: title_of(line),
                items: menu(lines, depth + 1),
            });
        } else if line.starts_with("menuentry ") {
            let (mut kernel, mut initrds, mut opts) = (None, Vec::new(), String::new());
            let mut open = braces(line);
            while open > 0 {
                let Some(inner) = lines.next() else { break };
                let inner = inner.trim();
                open += braces(inner);
                let mut words = inner.split_whitespace();
                match words.next() {
                    Some("linux" | "linux16" | "linuxefi") => {
                        kernel = words.next().and_then(path);
                        opts = options(words).unwrap_or_default();
                    }
                    Some("initrd" | "initrd16" | "initrdefi") => {
                        initrds.extend(words.filter_map(path));
                    }
                    _ => {}
                }
            }
            items.push(Item::Entry {
                title: title_of(line),
                entry: kernel.map(|kernel| BootEntry {
                    kernel,
                    initrds,
                    options: opts,
                }),
            });
        } else if braces(line) > 0 {
            // A function or other block: skipped whole.
            let mut open = braces(line);
            while open > 0 {
                let Some(inner) = lines.next() else { break };
                open += braces(inner);
            }
        }
    }
    items
}

/// GRUB's default entry in a `grub.cfg`: what `set default=` names, by number or
/// title, with `>` stepping into a submenu (`1>2`, `Advanced options>…`); the
/// first entry when it is unset, `saved`, or names nothing.
pub fn grub(text: &str) -> Option<BootEntry> {
    let default = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("set default="))
        .next_back()
        .map(|v| v.trim_matches(['"', '\'']).to_string());
    let items = menu(&mut text.lines(), 0);
    let pick = |items: &[Item], key: &str| -> Option<usize> {
        match key.parse::<usize>() {
            Ok(n) => (n < items.len()).then_some(n),
            Err(_) => items.iter().position(|i| match i {
                Item::Entry { title, .. } | Item::Submenu { title, .. } => title == key,
            }),
        }
    };
    let mut level: &[Item] = &items;
    let path: Vec<&str> = match default.as_deref() {
        Some(d) if d != "saved" && !d.is_empty() => d.split('>').collect(),
        _ => vec!["0"],
    };
    for (i, key) in path.iter().enumerate() {
        let index = pick(level, key).unwrap_or(0);
        match level.get(index)? {
            Item::Entry { entry, .. } => {
                return if i + 1 == path.len() {
                    entry.clone()
                } else {
                    None
                };
            }
            Item::Submenu { items, .. } => level = items,
        }
    }
    None
}

/// One `LABEL` of a SYSLINUX configuration.
#[derive(Default)]
struct Label {
    name: String,
    kernel: Option<String>,
    initrds: Vec<String>,
    options: Vec<String>,
}

/// SYSLINUX/EXTLINUX's default label (`DEFAULT`, else the first `LABEL`).
pub fn syslinux(text: &str) -> Option<BootEntry> {
    let mut default = None;
    let mut labels: Vec<Label> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        match key.to_ascii_uppercase().as_str() {
            "DEFAULT" => default = words.next().map(str::to_string),
            "LABEL" => labels.push(Label {
                name: words.next()?.to_string(),
                ..Label::default()
            }),
            "KERNEL" | "LINUX" => {
                if let Some(l) = labels.last_mut() {
                    l.kernel = words.next().and_then(path);
                }
            }
            "INITRD" => {
                if let Some(l) = labels.last_mut() {
                    l.initrds
                        .extend(words.next().unwrap_or("").split(',').filter_map(path));
                }
            }
            "APPEND" => {
                if let Some(l) = labels.last_mut() {
                    for w in words {
                        match w.strip_prefix("initrd=") {
                            Some(list) => l.initrds.extend(list.split(',').filter_map(path)),
                            None => l.options.push(w.to_string()),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let chosen = default
        .as_deref()
        .and_then(|d| labels.iter().find(|l| l.name == d))
        .or(labels.first())?;
    Some(BootEntry {
        kernel: chosen.kernel.clone()?,
        initrds: chosen.initrds.clone(),
        options: options(chosen.options.iter().map(String::as_str))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's grub.cfg, as update-grub writes it (trimmed).
    const DEBIAN_GRUB: &str = r#"
set default="0"
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
fi
export menuentry_id_option
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-0d5e' {
	load_video
	insmod ext2
	search --no-floppy --fs-uuid --set=root 0d5e6b1a-7c3f-4e29-9b8d-4a1f2c3e5d70
	echo	'Loading Linux 6.1.0-28-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-28-amd64 root=UUID=0d5e6b1a-7c3f-4e29-9b8d-4a1f2c3e5d70 ro console=ttyS0 $vt_handoff
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-6.1.0-28-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-0d5e' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-28-amd64 (recovery mode)' {
		linux	/boot/vmlinuz-6.1.0-28-amd64 root=UUID=0d5e6b1a ro single
		initrd	/boot/initrd.img-6.1.0-28-amd64
	}
}
"#;

    #[test]
    fn debian_grub_default_entry() {
        assert_eq!(
            grub(DEBIAN_GRUB),
            Some(BootEntry {
                kernel: "/boot/vmlinuz-6.1.0-28-amd64".into(),
                initrds: vec!["/boot/initrd.img-6.1.0-28-amd64".into()],
                options: "root=UUID=0d5e6b1a-7c3f-4e29-9b8d-4a1f2c3e5d70 ro console=ttyS0".into(),
            })
        );
        let by_title = DEBIAN_GRUB.replace(
            "set default=\"0\"",
            "set default=\"Debian GNU/Linux, with Linux 6.1.0-28-amd64 (recovery mode)\"",
        );
        // A title inside a submenu is not a top-level one: the first is taken.
        assert_eq!(
            grub(&by_title).unwrap().options.split(' ').next_back(),
            Some("console=ttyS0")
        );
        // Into the submenu, by number or by titles.
        for default in [
            "1>0",
            "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-28-amd64 (recovery mode)",
        ] {
            let text =
                DEBIAN_GRUB.replace("set default=\"0\"", &format!("set default=\"{default}\""));
            assert_eq!(
                grub(&text).unwrap().options,
                "root=UUID=0d5e6b1a ro single",
                "{default}"
            );
        }
        assert_eq!(
            grub(&DEBIAN_GRUB.replace("set default=\"0\"", "set default=\"saved\""))
                .unwrap()
                .kernel,
            "/boot/vmlinuz-6.1.0-28-amd64"
        );
        assert_eq!(grub("set default=\"7\"\n"), None);
        let deep = "submenu 'a' {\n".repeat(50);
        assert_eq!(grub(&deep), None);
        assert_eq!(grub("menuentry 'x' {\n linux ../../etc/shadow\n}\n"), None);
    }

    #[test]
    fn bls_entries() {
        let e = bls("title Fedora\nversion 6.5\nlinux /vmlinuz-6.5\ninitrd /initramfs-6.5.img\noptions root=UUID=abcd ro quiet\n").unwrap();
        assert_eq!(e.kernel, "/vmlinuz-6.5");
        assert_eq!(e.initrds, ["/initramfs-6.5.img"]);
        assert_eq!(e.options, "root=UUID=abcd ro quiet");
        assert_eq!(bls("title x\noptions a\n"), None);
        assert_eq!(bls("linux vmlinuz\n"), None, "a relative path");
    }

    #[test]
    fn syslinux_default_label() {
        let cfg = "DEFAULT imprint\nLABEL other\n  LINUX /other\nLABEL imprint\n  KERNEL /vmlinuz\n  APPEND root=PARTUUID=5eed console=ttyS0 initrd=/initrd.img quiet\n";
        let e = syslinux(cfg).unwrap();
        assert_eq!(e.kernel, "/vmlinuz");
        assert_eq!(e.initrds, ["/initrd.img"]);
        assert_eq!(e.options, "root=PARTUUID=5eed console=ttyS0 quiet");
        let first = syslinux("label a\nlinux /a\ninitrd /i1,/i2\nappend x\n").unwrap();
        assert_eq!((first.kernel.as_str(), first.initrds.len()), ("/a", 2));
    }

    #[test]
    fn hostile_configurations_give_nothing_or_bounded_text() {
        assert_eq!(grub(""), None);
        assert_eq!(syslinux("DEFAULT x\n"), None);
        let long = format!("linux /k\noptions {}\n", "a".repeat(5000));
        assert_eq!(bls(&long), None);
        let garbage: String = (0..4000u32)
            .map(|i| char::from((i * 7919 % 251) as u8))
            .collect();
        let _ = (grub(&garbage), bls(&garbage), syslinux(&garbage));
    }
}
