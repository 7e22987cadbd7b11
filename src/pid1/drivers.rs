//! Loading drivers for the hardware present: every `modalias` under /sys/devices
//! is matched against the initramfs's modules.alias, and the matches are loaded
//! with their dependencies. Loading a bus driver (virtio_pci) makes new devices
//! appear (virtio disks and NICs), so passes repeat until nothing new loads.
//!
//! The same code answers the kernel's own `/sbin/modprobe` requests.

use crate::format::kmod::ModuleIndex;
use crate::sys;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub struct Drivers {
    dir: PathBuf,
    index: ModuleIndex,
    builtin: BTreeSet<String>,
    loaded: BTreeSet<String>,
}

impl Drivers {
    /// Reads the module tables of the running kernel from the initramfs.
    pub fn open() -> Drivers {
        let dir = Path::new("/lib/modules").join(sys::kernel_release());
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let index = ModuleIndex::parse(&read("modules.dep"), &read("modules.alias"));
        let builtin = read("modules.builtin")
            .lines()
            .map(crate::format::kmod::module_name)
            .collect();
        if !dir.join("modules.dep").exists() {
            log::warn!(
                "no modules for kernel {} in the initramfs: build it for this kernel with `imprint initramfs build --kernel-release {}`",
                sys::kernel_release(),
                sys::kernel_release()
            );
        }
        // What an earlier pass (or the kernel's own modprobe call) loaded.
        let loaded = std::fs::read_to_string("/proc/modules")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        Drivers {
            dir,
            index,
            builtin,
            loaded,
        }
    }

    /// Loads `names` (module names or aliases) with their dependencies. Returns the
    /// modules newly loaded; failures are logged, not fatal: a missing driver shows
    /// up later as a missing disk or NIC, with a clearer message.
    pub fn load(&mut self, names: &[String]) -> Vec<String> {
        let mut wanted: Vec<String> = Vec::new();
        for n in names {
            // Module names fold '-' to '_'; aliases ("fs-vfat") must not be folded.
            let module = n.replace('-', "_");
            if self.index.contains(&module) {
                wanted.push(module);
            } else {
                wanted.extend(self.index.lookup(n));
            }
        }
        let (order, _) = self.index.load_order(wanted.iter().map(String::as_str));
        let mut newly = Vec::new();
        for name in order {
            if self.loaded.contains(&name) || self.builtin.contains(&name) {
                continue;
            }
            let Some(rel) = self.index.path_of(&name) else {
                continue;
            };
            match sys::load_module(&self.dir.join(rel)) {
                Ok(()) => {
                    log::debug!("loaded {name}");
                    newly.push(name.clone());
                }
                Err(e) => log::warn!("loading module {name}: {e}"),
            }
            self.loaded.insert(name);
        }
        newly
    }

    /// Loads drivers for every device in /sys until a pass loads nothing new.
    pub fn coldplug(&mut self) -> Vec<String> {
        let mut all = Vec::new();
        for _ in 0..6 {
            let mut aliases = Vec::new();
            collect_modaliases(Path::new("/sys/devices"), 0, &mut aliases);
            aliases.sort();
            aliases.dedup();
            let newly = self.load(&aliases);
            if newly.is_empty() {
                break;
            }
            all.extend(newly);
            // Give new buses a moment to enumerate their children.
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        all
    }
}

fn collect_modaliases(dir: &Path, depth: usize, out: &mut Vec<String>) {
    if depth > 24 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect_modaliases(&entry.path(), depth + 1, out);
        } else if kind.is_file()
            && entry.file_name() == "modalias"
            && let Ok(text) = std::fs::read_to_string(entry.path())
        {
            let alias = text.trim();
            if !alias.is_empty() {
                out.push(alias.to_string());
            }
        }
    }
}

/// `/sbin/modprobe` as the kernel calls it: `modprobe -q -- NAME`. Exit status 0
/// when the module (or one matching the alias) is loaded or built in.
/// File system drivers, loaded up front rather than on the kernel's request
/// (which goes through modprobe and may come too late for a mount).
pub fn load_filesystems() {
    let modules = [
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "nls_utf8",
        "ext4",
        "crc32c_generic",
        "isofs",
    ];
    Drivers::open().load(&modules.map(String::from));
}

pub fn modprobe_main(args: &[String]) -> i32 {
    let names: Vec<String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    if names.is_empty() {
        return 1;
    }
    let mut drivers = Drivers::open();
    let mut ok = true;
    for name in &names {
        let module = name.replace('-', "_");
        let known = drivers.builtin.contains(&module)
            || drivers.index.contains(&module)
            || !drivers.index.lookup(name).is_empty();
        if !known {
            ok = false;
            continue;
        }
        drivers.load(std::slice::from_ref(name));
    }
    if ok { 0 } else { 1 }
}
