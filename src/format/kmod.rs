//! Kernel module metadata: `modules.dep` and `modules.alias` from a modules
//! directory, parsed from text. Used twice: on the host to pick the modules an
//! initramfs carries (with their dependencies), and in PID 1 to map the
//! `modalias` strings of present hardware to modules and their load order.

use super::glob::glob_match;
use std::collections::{BTreeMap, BTreeSet};

/// Module name as the kernel knows it: file stem, `-` folded to `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    /// name -> (path relative to the modules dir, dependency names)
    modules: BTreeMap<String, (String, Vec<String>)>,
    /// (pattern, module name), in file order
    aliases: Vec<(String, String)>,
}

impl ModuleIndex {
    /// Parses `modules.dep` and `modules.alias` text. Malformed lines are skipped:
    /// the files come from the kernel package, and one bad line must not cost the
    /// machine all its drivers.
    pub fn parse(dep: &str, alias: &str) -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(module_name).collect();
            index
                .modules
                .insert(module_name(path), (path.to_string(), deps));
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(name), None) =
                (words.next(), words.next(), words.next(), words.next())
            {
                index
                    .aliases
                    .push((pattern.to_string(), name.replace('-', "_")));
            }
        }
        index
    }

    pub fn contains(&self, name: &str) -> bool {
        self.modules.contains_key(&name.replace('-', "_"))
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.modules
            .get(&name.replace('-', "_"))
            .map(|(p, _)| p.as_str())
    }

    /// Modules whose alias patterns match `modalias` (as read from sysfs), each once.
    pub fn lookup(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (pattern, name) in &self.aliases {
            if glob_match(pattern.as_bytes(), modalias.as_bytes()) && !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }

    /// `names` and everything they depend on, dependencies before dependants, each
    /// once. Names not in the index (built into the kernel, or absent) are skipped
    /// and returned separately.
    pub fn load_order<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        for name in names {
            let name = name.replace('-', "_");
            if !self.modules.contains_key(&name) {
                if !missing.contains(&name) {
                    missing.push(name);
                }
                continue;
            }
            self.visit(&name, &mut seen, &mut order);
        }
        (order, missing)
    }

    /// Adds `name` after its dependencies, depth first. The path walked is kept
    /// on a stack of its own, not the thread's: a chain of dependencies is as
    /// long as `modules.dep` makes it.
    fn visit<'a>(&'a self, name: &'a str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        // (module, index of its next dependency to visit)
        let mut path = vec![(name, 0)];
        while let Some(top) = path.last_mut() {
            let (module, next) = *top;
            let deps = self.modules.get(module).map_or(&[][..], |(_, d)| d);
            match deps.get(next) {
                Some(dep) => {
                    top.1 += 1;
                    if seen.insert(dep.clone()) {
                        path.push((dep, 0));
                    }
                }
                None => {
                    if self.modules.contains_key(module) {
                        order.push(module.to_string());
                    }
                    path.pop();
                }
            }
        }
    }

    /// Restricts the alias table to modules in `keep` (the ones an initramfs carries).
    pub fn aliases_for(&self, keep: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for (pattern, name) in &self.aliases {
            if keep.contains(name) {
                out.push_str(&format!("alias {pattern} {name}\n"));
            }
        }
        out
    }

    /// `modules.dep` lines for the modules in `keep`.
    pub fn deps_for(&self, keep: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for name in keep {
            if let Some((path, deps)) = self.modules.get(name) {
                let dep_paths: Vec<&str> = deps
                    .iter()
                    .filter_map(|d| self.modules.get(d).map(|(p, _)| p.as_str()))
                    .collect();
                out.push_str(&format!("{path}: {}\n", dep_paths.join(" ")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/mbcache.ko.xz:
kernel/fs/jbd2/jbd2.ko.xz:
garbage line without colon
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias virtio:d00000002v* virtio_blk
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias fs-ext4 ext4
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias bogus
";

    #[test]
    fn names_are_normalised() {
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(module_name("a/usb-storage.ko"), "usb_storage");
        assert_eq!(module_name("x.ko.zst"), "x");
    }

    #[test]
    fn aliases_match_sysfs_modaliases() {
        let idx = ModuleIndex::parse(DEP, ALIAS);
        assert_eq!(idx.lookup("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        assert_eq!(
            idx.lookup("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
            ["virtio_pci"]
        );
        assert!(
            idx.lookup("pci:v00008086d00001234sv0sd0bc0sc0i0")
                .is_empty()
        );
        assert_eq!(idx.lookup("fs-ext4"), ["ext4"]);
    }

    #[test]
    fn dependencies_load_first_once() {
        let idx = ModuleIndex::parse(DEP, ALIAS);
        let (order, missing) = idx.load_order(["virtio_blk", "virtio_pci", "e1000", "ext4"]);
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert!(pos("virtio") < pos("virtio_ring"));
        assert!(pos("virtio_ring") < pos("virtio_blk"));
        assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"));
        assert!(pos("jbd2") < pos("ext4") && pos("mbcache") < pos("ext4"));
        assert_eq!(order.len(), 8);
        assert_eq!(missing, ["e1000"]);
        assert_eq!(idx.path_of("ext4"), Some("kernel/fs/ext4/ext4.ko.xz"));
    }

    #[test]
    fn a_long_dependency_chain_does_not_exhaust_the_stack() {
        // m0 needs m1, which needs m2, ... 100 000 deep.
        let n = 100_000;
        let dep: String = (0..n)
            .map(|i| format!("kernel/m{i}.ko: kernel/m{}.ko\n", i + 1))
            .collect();
        let order = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || ModuleIndex::parse(&dep, "").load_order(["m0"]).0)
            .unwrap()
            .join()
            .unwrap();
        // m{n} is named but not listed: not in the order.
        assert_eq!(order.len(), n);
        assert_eq!(order[0], format!("m{}", n - 1));
        assert_eq!(order[n - 1], "m0");
    }

    #[test]
    fn subsets_for_an_initramfs() {
        let idx = ModuleIndex::parse(DEP, ALIAS);
        let keep: BTreeSet<String> = ["virtio", "virtio_ring", "virtio_blk"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            idx.aliases_for(&keep),
            "alias virtio:d00000002v* virtio_blk\n"
        );
        let dep = idx.deps_for(&keep);
        let again = ModuleIndex::parse(&dep, "");
        assert_eq!(
            again.load_order(["virtio_blk"]).0,
            ["virtio", "virtio_ring", "virtio_blk"]
        );
    }
}
