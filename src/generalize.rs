//! Generalizing an installed root: what must be unique to each machine is
//! removed from a copy of another machine's OS, so every duplicate makes its
//! own at its first boot. Everything happens inside the root ([`Root`]): its
//! own links are resolved inside it (never out), and the last part of a path
//! removed is never followed.
//!
//! The list ([`UNIQUE`]), and what makes each anew:
//! - `/etc/machine-id`: left empty, for systemd to make one at first boot;
//! - `/var/lib/dbus/machine-id` (a file of its own, not a link to the one in
//!   `/etc`): removed, D-Bus makes one;
//! - SSH host keys (`/etc/ssh/ssh_host_*_key`, `.pub`): removed; the
//!   first-boot agent makes new ones before sshd starts;
//! - the systemd random seed and credential secret: removed;
//! - DHCP leases and DUIDs (dhclient, dhcpcd, NetworkManager): removed;
//! - cloud-init's instance data (`/var/lib/cloud/instance`, `instances`,
//!   `data`, `sem`): removed, so cloud-init runs as on a new instance (its
//!   seed is kept);
//! - imprint's own state of the source (`/var/lib/imprint`): removed.

use crate::sys::{EntryInfo, EntryType, Root};
use std::io;

/// One kind of thing unique to a machine, and where it is.
#[derive(Debug, Clone, Copy)]
pub enum Unique {
    /// A file emptied (kept, so what checks for it finds it).
    Emptied(&'static str),
    /// A file or link removed.
    File(&'static str),
    /// A file removed only where it is a regular file (a link to another
    /// unique file follows that one).
    OwnFile(&'static str),
    /// Files in a directory whose names start and end as given, removed.
    Named {
        dir: &'static str,
        prefix: &'static str,
        suffixes: &'static [&'static str],
    },
    /// A directory and everything in it, removed.
    Tree(&'static str),
}

pub const UNIQUE: &[Unique] = &[
    Unique::Emptied("/etc/machine-id"),
    Unique::OwnFile("/var/lib/dbus/machine-id"),
    Unique::Named {
        dir: "/etc/ssh",
        prefix: "ssh_host_",
        suffixes: &["_key", "_key.pub", "_key-cert.pub"],
    },
    Unique::File("/var/lib/systemd/random-seed"),
    Unique::File("/var/lib/systemd/credential.secret"),
    Unique::Named {
        dir: "/var/lib/dhcp",
        prefix: "",
        suffixes: &[".leases", ".lease"],
    },
    Unique::Tree("/var/lib/dhcpcd"),
    Unique::File("/etc/dhcpcd.duid"),
    Unique::Named {
        dir: "/var/lib/NetworkManager",
        prefix: "",
        suffixes: &[".lease", "secret_key", "NetworkManager-intern.conf"],
    },
    Unique::File("/var/lib/cloud/instance"),
    Unique::Tree("/var/lib/cloud/instances"),
    Unique::Tree("/var/lib/cloud/data"),
    Unique::Tree("/var/lib/cloud/sem"),
    Unique::Tree("/var/lib/imprint"),
];

/// Entries removed at most in one tree: a root is an OS, not a denial of service.
const MAX_TREE_ENTRIES: usize = 100_000;

/// Removes what [`UNIQUE`] lists from `root`; returns what it changed, a path
/// each. What is not there is not an error.
pub fn generalize(root: &Root) -> io::Result<Vec<String>> {
    let mut changed = Vec::new();
    for item in UNIQUE {
        match *item {
            Unique::Emptied(path) => {
                let (dir, name) = split(path);
                if matches!(entry(root, path)?, Some(i) if i.kind == EntryType::File && i.size > 0)
                {
                    let mode = root.mode(path)?;
                    root.write_file(dir, name, b"", mode)?;
                    changed.push(path.to_string());
                }
            }
            Unique::File(path) => {
                if entry(root, path)?.is_some() {
                    let (dir, name) = split(path);
                    root.remove(dir, name)?;
                    changed.push(path.to_string());
                }
            }
            Unique::OwnFile(path) => {
                if matches!(entry(root, path)?, Some(i) if i.kind == EntryType::File) {
                    let (dir, name) = split(path);
                    root.remove(dir, name)?;
                    changed.push(path.to_string());
                }
            }
            Unique::Named {
                dir,
                prefix,
                suffixes,
            } => {
                // Reached through the root's own links (`/etc/ssh` may be
                // one), never out of it.
                match root.lstat(dir) {
                    Ok(i) if i.kind == EntryType::Dir || i.kind == EntryType::Symlink => {}
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                let names = match root.list(dir, MAX_TREE_ENTRIES) {
                    Ok(names) => names,
                    // A link to nothing inside the root.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for name in names {
                    if name.starts_with(prefix) && suffixes.iter().any(|s| name.ends_with(s)) {
                        let path = format!("{dir}/{name}");
                        if matches!(entry(root, &path)?, Some(i) if i.kind != EntryType::Dir) {
                            root.remove(dir, &name)?;
                            changed.push(path);
                        }
                    }
                }
            }
            Unique::Tree(path) => match entry(root, path)? {
                Some(i) if i.kind == EntryType::Dir => {
                    let mut budget = MAX_TREE_ENTRIES;
                    remove_tree(root, path, &mut budget)?;
                    changed.push(path.to_string());
                }
                Some(_) => {
                    let (dir, name) = split(path);
                    root.remove(dir, name)?;
                    changed.push(path.to_string());
                }
                None => {}
            },
        }
    }
    Ok(changed)
}

/// What `path` itself is (a link is not followed at its end), its parents
/// reached inside the root; None when nothing is there. Other errors are
/// errors: what cannot be looked at is not left unseen, or every duplicate
/// would keep the source's keys.
fn entry(root: &Root, path: &str) -> io::Result<Option<EntryInfo>> {
    match root.lstat(path) {
        Ok(info) => Ok(Some(info)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
    }
}

/// `/a/b/c` as (`/a/b`, `c`).
fn split(path: &str) -> (&str, &str) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    (if dir.is_empty() { "/" } else { dir }, name)
}

/// Removes the directory `path` (reached without following links) and all in
/// it, at most `budget` entries.
fn remove_tree(root: &Root, path: &str, budget: &mut usize) -> io::Result<()> {
    for name in root.list(path, *budget)? {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path}: too many entries"),
            )
        })?;
        let child = format!("{path}/{name}");
        match root.lstat(&child)?.kind {
            EntryType::Dir => remove_tree(root, &child, budget)?,
            _ => root.remove(path, &name)?,
        }
    }
    let (dir, name) = split(path);
    root.remove_empty_dir(dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn put(root: &Path, path: &str, contents: &str) {
        let path = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn read(root: &Path, path: &str) -> Option<String> {
        fs::read_to_string(root.join(path.trim_start_matches('/'))).ok()
    }

    /// A root with one of each unique thing, and things that must stay.
    fn source_os(root: &Path) {
        put(
            root,
            "/etc/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        );
        put(
            root,
            "/var/lib/dbus/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        );
        for key in [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "ssh_host_rsa_key",
        ] {
            put(root, &format!("/etc/ssh/{key}"), "a key");
        }
        put(root, "/etc/ssh/sshd_config", "PermitRootLogin no\n");
        put(root, "/var/lib/systemd/random-seed", "seed");
        put(root, "/var/lib/dhcp/dhclient.eth0.leases", "lease");
        put(root, "/var/lib/dhcpcd/duid", "duid");
        put(
            root,
            "/var/lib/NetworkManager/internal-x-eth0.lease",
            "lease",
        );
        put(root, "/var/lib/NetworkManager/secret_key", "secret");
        put(root, "/var/lib/cloud/instances/i-1/obj.pkl", "pickle");
        put(root, "/var/lib/cloud/data/instance-id", "i-1");
        put(
            root,
            "/var/lib/cloud/seed/nocloud/user-data",
            "#cloud-config\n",
        );
        std::os::unix::fs::symlink(
            "/var/lib/cloud/instances/i-1",
            root.join("var/lib/cloud/instance"),
        )
        .unwrap();
        put(root, "/var/lib/imprint/report.json", "{}");
        put(root, "/etc/hostname", "source\n");
    }

    fn generalized(root: &Path) -> Vec<String> {
        generalize(&Root::open(root).unwrap()).unwrap()
    }

    #[test]
    fn the_machine_id_is_left_empty_and_dbus_makes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        source_os(dir.path());
        generalized(dir.path());
        assert_eq!(read(dir.path(), "/etc/machine-id").as_deref(), Some(""));
        assert_eq!(read(dir.path(), "/var/lib/dbus/machine-id"), None);
        // A link to /etc/machine-id follows the one systemd makes: kept.
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "/etc/machine-id", "x\n");
        fs::create_dir_all(dir.path().join("var/lib/dbus")).unwrap();
        std::os::unix::fs::symlink(
            "/etc/machine-id",
            dir.path().join("var/lib/dbus/machine-id"),
        )
        .unwrap();
        generalized(dir.path());
        assert!(fs::symlink_metadata(dir.path().join("var/lib/dbus/machine-id")).is_ok());
    }

    #[test]
    fn ssh_host_keys_go_and_the_configuration_stays() {
        let dir = tempfile::tempdir().unwrap();
        source_os(dir.path());
        let changed = generalized(dir.path());
        assert!(
            changed.contains(&"/etc/ssh/ssh_host_ed25519_key.pub".to_string()),
            "{changed:?}"
        );
        let left: Vec<String> = fs::read_dir(dir.path().join("etc/ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["sshd_config"]);
    }

    #[test]
    fn the_random_seed_and_network_leases_go() {
        let dir = tempfile::tempdir().unwrap();
        source_os(dir.path());
        generalized(dir.path());
        for gone in [
            "/var/lib/systemd/random-seed",
            "/var/lib/dhcp/dhclient.eth0.leases",
            "/var/lib/dhcpcd/duid",
            "/var/lib/NetworkManager/internal-x-eth0.lease",
            "/var/lib/NetworkManager/secret_key",
        ] {
            assert_eq!(read(dir.path(), gone), None, "{gone}");
        }
        assert!(!dir.path().join("var/lib/dhcpcd").exists());
    }

    #[test]
    fn cloud_init_starts_as_on_a_new_instance_with_its_seed() {
        let dir = tempfile::tempdir().unwrap();
        source_os(dir.path());
        generalized(dir.path());
        let cloud = dir.path().join("var/lib/cloud");
        assert!(fs::symlink_metadata(cloud.join("instance")).is_err());
        assert!(!cloud.join("instances").exists() && !cloud.join("data").exists());
        assert_eq!(
            read(dir.path(), "/var/lib/cloud/seed/nocloud/user-data").as_deref(),
            Some("#cloud-config\n")
        );
    }

    #[test]
    fn imprints_own_state_of_the_source_goes_and_nothing_else_changes() {
        let dir = tempfile::tempdir().unwrap();
        source_os(dir.path());
        generalized(dir.path());
        assert!(!dir.path().join("var/lib/imprint").exists());
        assert_eq!(
            read(dir.path(), "/etc/hostname").as_deref(),
            Some("source\n")
        );
        // A second time finds nothing left to change.
        assert_eq!(generalized(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn the_roots_own_links_are_followed_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "/usr/share/ssh/ssh_host_ed25519_key", "a key");
        put(dir.path(), "/usr/share/ssh/sshd_config", "x");
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/usr/share/ssh", dir.path().join("etc/ssh")).unwrap();
        let changed = generalized(dir.path());
        assert_eq!(changed, ["/etc/ssh/ssh_host_ed25519_key"]);
        assert_eq!(
            read(dir.path(), "/usr/share/ssh/ssh_host_ed25519_key"),
            None
        );
        assert_eq!(
            read(dir.path(), "/usr/share/ssh/sshd_config").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn links_out_of_the_root_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        put(
            outside.path(),
            "/ssh_host_ed25519_key",
            "the host's own key",
        );
        put(outside.path(), "/instances/keep", "the host's file");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::create_dir_all(dir.path().join("var/lib/cloud")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/ssh")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("instances"),
            dir.path().join("var/lib/cloud/instances"),
        )
        .unwrap();
        generalized(dir.path());
        assert_eq!(
            read(outside.path(), "/ssh_host_ed25519_key").as_deref(),
            Some("the host's own key")
        );
        assert_eq!(
            read(outside.path(), "/instances/keep").as_deref(),
            Some("the host's file")
        );
    }
}
