//! The first-boot agent for images that carry none: after the deploy, the
//! deploy environment finds the installed OS's root file system, and when the OS
//! has no imprint of its own (a stock distribution image), installs itself there
//! with a systemd unit that runs `imprint firstboot` early in every boot. Where
//! the OS has cloud-init, it also writes a NoCloud seed with the host's settings,
//! so cloud-init applies them the way the OS expects.
//!
//! The root is found by a fixed rule: partitions of the Discoverable Partitions
//! x86-64 root type first, then Linux file system partitions, in table order; the
//! first that mounts (ext4) and holds an `os-release` is the root. Nothing is
//! written unless the OS uses systemd and has no agent (or an older one); what was
//! done, or why not, goes into the state record. A failure here never fails the
//! deploy: the disk boots either way.

use super::disks::DiskInfo;
use super::drivers;
use super::identity::{self, Rename};
use crate::format::gpt::{Guid, Layout, Partition};
use crate::format::state::Agent;
use crate::sys::{self, Root};
use anyhow::{Context, Result};
use std::path::Path;

/// The agent layout this build installs: the binary and unit below. An image
/// whose agent says a format at least this new is left alone.
pub(super) const FORMAT: u32 = 1;
const DIR: &str = "usr/lib/imprint";
const FORMAT_FILE: &str = "agent-format";
const UNIT_DIR: &str = "etc/systemd/system";
const UNIT_NAME: &str = "imprint-firstboot.service";
const UNIT: &str = "\
[Unit]
Description=imprint first boot: host settings, migration from the previous OS, commit
DefaultDependencies=no
Wants=network-pre.target
After=local-fs.target systemd-remount-fs.service
Before=network-pre.target sysinit.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/imprint/imprint firstboot
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
";
/// Where an image's own imprint would be.
const OWN_AGENT_PATHS: &[&str] = &[
    "usr/bin/imprint",
    "usr/sbin/imprint",
    "usr/local/bin/imprint",
    "usr/local/sbin/imprint",
];
const MOUNT_POINT: &str = "/run/imprint/root";

/// Discoverable Partitions Specification: root partition, x86-64.
const ROOT_X86_64: Guid = Guid::from_fields(
    0x4F68BCE3,
    0xE8CD,
    0x4DB1,
    [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
);
/// Linux file system data.
const LINUX_DATA: Guid = Guid::from_fields(
    0x0FC63DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

/// What the OS in a root needs.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Nothing(Agent),
    Install,
}

/// The partitions that may hold the root, in the order they are tried.
fn root_candidates(layout: &Layout) -> Vec<&Partition> {
    let of_type = |t: Guid| layout.partitions.iter().filter(move |p| p.type_guid == t);
    of_type(ROOT_X86_64).chain(of_type(LINUX_DATA)).collect()
}

/// Decides from the root's contents.
fn need(root: &Root) -> Need {
    let format_file = format!("{DIR}/{FORMAT_FILE}");
    if root.exists(&format_file) {
        let format = root
            .read(&format_file, 64)
            .ok()
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u32>().ok());
        match format {
            Some(f) if f >= FORMAT => return Need::Nothing(Agent::Own),
            _ => return Need::Install,
        }
    }
    if OWN_AGENT_PATHS.iter().any(|p| root.exists(p)) {
        return Need::Nothing(Agent::Own);
    }
    if !root.exists("usr/lib/systemd/systemd") && !root.exists("lib/systemd/systemd") {
        return Need::Nothing(Agent::Skipped(
            "the OS has no systemd and no imprint: it must run `imprint firstboot` itself".into(),
        ));
    }
    Need::Install
}

/// Installs `binary` as the agent into `root`, with its unit enabled.
fn install(root: &Root, binary: &[u8]) -> Result<Agent> {
    root.write_file(DIR, "imprint", binary, 0o755)
        .context("writing /usr/lib/imprint/imprint")?;
    root.write_file(UNIT_DIR, UNIT_NAME, UNIT.as_bytes(), 0o644)
        .with_context(|| format!("writing /{UNIT_DIR}/{UNIT_NAME}"))?;
    root.symlink(
        &format!("{UNIT_DIR}/sysinit.target.wants"),
        UNIT_NAME,
        &format!("/{UNIT_DIR}/{UNIT_NAME}"),
    )
    .context("enabling the unit")?;
    // Last: an interrupted install is retried by the next deploy.
    root.write_file(DIR, FORMAT_FILE, format!("{FORMAT}\n").as_bytes(), 0o644)
        .context("writing the agent format")?;
    Ok(Agent::Installed { format: FORMAT })
}

/// The per-host data a NoCloud seed carries.
pub(super) struct Seed {
    /// Unique per deploy, so cloud-init runs its first-boot modules again.
    pub instance_id: String,
    pub hostname: Option<String>,
}

const SEED_DIR: &str = "var/lib/cloud/seed/nocloud";

fn has_cloud_init(root: &Root) -> bool {
    root.exists("usr/bin/cloud-init") || root.exists("etc/cloud/cloud.cfg")
}

/// Writes the NoCloud seed cloud-init reads on first boot: meta-data with the
/// instance id and host name, and an empty cloud-config as user-data.
fn write_seed(root: &Root, seed: &Seed) -> Result<()> {
    // Both values are plain names (the command line checked the host name), so
    // they need no YAML quoting; the instance id is made here.
    let mut meta = format!("instance-id: {}\n", seed.instance_id);
    if let Some(h) = &seed.hostname {
        meta.push_str(&format!("local-hostname: {h}\n"));
    }
    root.write_file(SEED_DIR, "meta-data", meta.as_bytes(), 0o600)
        .context("writing the NoCloud meta-data")?;
    root.write_file(SEED_DIR, "user-data", b"#cloud-config\n{}\n", 0o600)
        .context("writing the NoCloud user-data")?;
    Ok(())
}

/// What was found and done in one root.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Provided {
    pub agent: Agent,
    /// A NoCloud seed was written for the OS's cloud-init.
    pub cloud_init_seed: bool,
    /// Files whose references to renamed file systems were rewritten.
    pub rewritten: Vec<String>,
}

/// Files in the root that name file systems by identity.
const REFERENCES: &[&str] = &[
    "etc/fstab",
    "boot/grub/grub.cfg",
    "etc/kernel/cmdline",
    "etc/crypttab",
];
/// Largest reference file rewritten (GRUB configurations run to some 10 KiB).
const REFERENCE_LIMIT: u64 = 4 << 20;

/// Rewrites references to renamed file systems in the files that hold them.
fn rewrite_references(root: &Root, renames: &[Rename]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for rel in REFERENCES {
        if !root.exists(rel) {
            continue;
        }
        let bytes = root.read(rel, REFERENCE_LIMIT + 1)?;
        if bytes.len() as u64 > REFERENCE_LIMIT {
            log::warn!("/{rel} is larger than {REFERENCE_LIMIT} bytes; left as it is");
            continue;
        }
        let Ok(text) = String::from_utf8(bytes) else {
            log::warn!("/{rel} is not text; left as it is");
            continue;
        };
        let new = identity::rewrite(&text, renames);
        if new != text {
            let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            let mode = root.mode(rel).unwrap_or(0o644);
            root.write_file(dir, name, new.as_bytes(), mode)
                .with_context(|| format!("rewriting /{rel}"))?;
            done.push(format!("/{rel}"));
        }
    }
    Ok(done)
}

/// Looks at the root mounted at `path`, installs the agent if it needs one and
/// seeds cloud-init if it has it. `remount_rw` makes the root writable first.
fn provide(
    path: &Path,
    seed: &Seed,
    renames: &[Rename],
    binary: &dyn Fn() -> Result<Vec<u8>>,
    remount_rw: &dyn Fn() -> Result<()>,
) -> Result<Option<Provided>> {
    let root = Root::open(path).with_context(|| format!("opening {}", path.display()))?;
    let own = OWN_AGENT_PATHS.iter().any(|p| root.exists(p));
    if !own && !root.exists("etc/os-release") && !root.exists("usr/lib/os-release") {
        return Ok(None);
    }
    let need = need(&root);
    let cloud = has_cloud_init(&root);
    // An open directory inside the mount would keep it busy.
    drop(root);
    if need == Need::Install || cloud || !renames.is_empty() {
        remount_rw()?;
    }
    let root = Root::open(path)?;
    let rewritten = rewrite_references(&root, renames)?;
    if cloud {
        write_seed(&root, seed)?;
    }
    let agent = match need {
        Need::Nothing(agent) => agent,
        Need::Install => install(&root, &binary()?)?,
    };
    Ok(Some(Provided {
        agent,
        cloud_init_seed: cloud,
        rewritten,
    }))
}

/// Gives the OS just written to `disk` (partition table `layout`) an agent if it
/// has none, and a NoCloud seed if it has cloud-init. Never fails: what it could
/// not do is the reason in the returned agent.
pub(super) fn ensure(
    disk: &DiskInfo,
    layout: &Layout,
    seed: &Seed,
    renames: &[Rename],
) -> Provided {
    let mut provided = provide_root(disk, layout, seed, renames);
    if !renames.is_empty() {
        match rewrite_esp(disk, layout, renames) {
            Ok(files) => provided.rewritten.extend(files),
            Err(e) => log::warn!(
                "rewriting the boot loader's references on the ESP: {}",
                crate::error_text(&e)
            ),
        }
    }
    provided
}

const ESP_MOUNT_POINT: &str = "/run/imprint/esp";

/// The boot loader's configuration on the ESP names the root by identity too
/// (Debian's `\EFI\debian\grub.cfg`: `search.fs_uuid`). FAT has no links, so
/// plain paths under the mount point are safe.
fn rewrite_esp(disk: &DiskInfo, layout: &Layout, renames: &[Rename]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for p in layout
        .partitions
        .iter()
        .filter(|p| p.type_guid == crate::format::gpt::ESP_TYPE)
    {
        let device = disk
            .wait_for_partition(p.number)
            .map_err(anyhow::Error::msg)?;
        let _ = std::fs::create_dir_all(ESP_MOUNT_POINT);
        sys::mount(&device, ESP_MOUNT_POINT, "vfat", false)
            .with_context(|| format!("mounting the ESP {device}"))?;
        let result = (|| -> Result<()> {
            let efi = Path::new(ESP_MOUNT_POINT).join("EFI");
            let Ok(vendors) = std::fs::read_dir(&efi) else {
                return Ok(());
            };
            for vendor in vendors.flatten() {
                let cfg = vendor.path().join("grub.cfg");
                let Ok(meta) = std::fs::metadata(&cfg) else {
                    continue;
                };
                if meta.len() > REFERENCE_LIMIT {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&cfg) else {
                    continue;
                };
                let new = identity::rewrite(&text, renames);
                if new != text {
                    let tmp = cfg.with_extension("imprint-tmp");
                    std::fs::write(&tmp, &new)
                        .and_then(|()| std::fs::rename(&tmp, &cfg))
                        .with_context(|| format!("rewriting {}", cfg.display()))?;
                    done.push(format!(
                        "ESP:{}",
                        cfg.strip_prefix(ESP_MOUNT_POINT).unwrap_or(&cfg).display()
                    ));
                }
            }
            Ok(())
        })();
        sys::sync_all();
        if let Err(e) = sys::unmount(ESP_MOUNT_POINT) {
            log::warn!("unmounting {device}: {e}");
        }
        result?;
    }
    Ok(done)
}

fn provide_root(disk: &DiskInfo, layout: &Layout, seed: &Seed, renames: &[Rename]) -> Provided {
    let skipped = |why: String| Provided {
        agent: Agent::Skipped(why),
        cloud_init_seed: false,
        rewritten: Vec::new(),
    };
    let candidates = root_candidates(layout);
    if candidates.is_empty() {
        return skipped("no Linux root partition in the image's partition table".into());
    }
    drivers::load_filesystems();
    let _ = std::fs::create_dir_all(MOUNT_POINT);
    let mut seen = Vec::new();
    for p in candidates {
        let device = match disk.wait_for_partition(p.number) {
            Ok(d) => d,
            Err(e) => {
                seen.push(e);
                continue;
            }
        };
        if let Err(e) = sys::mount(&device, MOUNT_POINT, "ext4", true) {
            seen.push(format!("{device}: not mountable as ext4 ({e})"));
            continue;
        }
        let remount = || {
            sys::unmount(MOUNT_POINT)
                .and_then(|()| sys::mount(&device, MOUNT_POINT, "ext4", false))
                .with_context(|| format!("mounting {device} read-write"))
        };
        let binary = || std::fs::read("/proc/self/exe").context("reading this program");
        let result = provide(Path::new(MOUNT_POINT), seed, renames, &binary, &remount);
        if let Err(e) = sys::unmount(MOUNT_POINT) {
            log::warn!("unmounting {device}: {e}");
        }
        match result {
            Ok(Some(provided)) => return provided,
            Ok(None) => seen.push(format!("{device}: no os-release")),
            Err(e) => {
                return skipped(format!(
                    "installing the agent on {device} failed: {}",
                    crate::error_text(&e)
                ));
            }
        }
    }
    skipped(format!("no root file system found ({})", seen.join("; ")))
}

/// The line for the console.
pub(super) fn describe(agent: &Agent) -> String {
    match agent {
        Agent::NotChecked => "not checked".into(),
        Agent::Own => "the image carries its own first-boot agent".into(),
        Agent::Installed { format } => {
            format!("installed imprint as the first-boot agent (format {format}, {UNIT_NAME})")
        }
        Agent::Skipped(why) => format!("no first-boot agent installed: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn os_root(systemd: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/os-release"), "ID=debian\n").unwrap();
        if systemd {
            std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
            std::fs::write(r.join("usr/lib/systemd/systemd"), "").unwrap();
        }
        dir
    }

    fn seed() -> Seed {
        Seed {
            instance_id: "imprint-0123456789abcdef-1800000000".into(),
            hostname: Some("node-1".into()),
        }
    }

    fn run(root: &Path) -> Option<Agent> {
        provide(root, &seed(), &[], &|| Ok(b"BINARY".to_vec()), &|| Ok(()))
            .unwrap()
            .map(|p| p.agent)
    }

    #[test]
    fn a_stock_systemd_os_gets_the_agent_and_its_unit_enabled() {
        let dir = os_root(true);
        let r = dir.path();
        assert_eq!(run(r), Some(Agent::Installed { format: FORMAT }));
        assert_eq!(
            std::fs::read(r.join("usr/lib/imprint/imprint")).unwrap(),
            b"BINARY"
        );
        let mode = std::fs::metadata(r.join("usr/lib/imprint/imprint"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let unit = std::fs::read_to_string(r.join(format!("{UNIT_DIR}/{UNIT_NAME}"))).unwrap();
        assert!(unit.contains("ExecStart=/usr/lib/imprint/imprint firstboot"));
        assert_eq!(
            std::fs::read_link(r.join(format!("{UNIT_DIR}/sysinit.target.wants/{UNIT_NAME}")))
                .unwrap(),
            Path::new("/etc/systemd/system/imprint-firstboot.service")
        );
        // Deployed again over it: this agent's format is there, nothing to do.
        assert_eq!(run(r), Some(Agent::Own));
    }

    #[test]
    fn an_image_with_its_own_or_a_newer_agent_is_left_alone() {
        let dir = os_root(true);
        let r = dir.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/imprint"), "").unwrap();
        assert_eq!(run(r), Some(Agent::Own));
        assert!(!r.join(UNIT_DIR).exists());

        let dir = os_root(true);
        let r = dir.path();
        std::fs::create_dir_all(r.join(DIR)).unwrap();
        std::fs::write(r.join(DIR).join(FORMAT_FILE), format!("{}\n", FORMAT + 1)).unwrap();
        assert_eq!(run(r), Some(Agent::Own));
        // An older agent is replaced.
        std::fs::write(r.join(DIR).join(FORMAT_FILE), "0\n").unwrap();
        assert_eq!(run(r), Some(Agent::Installed { format: FORMAT }));
    }

    #[test]
    fn no_systemd_or_no_os_is_reported_not_guessed() {
        let dir = os_root(false);
        assert!(matches!(run(dir.path()), Some(Agent::Skipped(why)) if why.contains("systemd")));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(run(empty.path()), None);
    }

    #[test]
    fn links_in_the_image_never_lead_out_of_its_root() {
        let dir = os_root(true);
        let r = dir.path();
        let outside = tempfile::tempdir().unwrap();
        // A hostile image: its unit directory is an absolute link to a host path,
        // and its binary directory climbs out with "..".
        std::fs::create_dir_all(r.join("etc/systemd")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("etc/systemd/system")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("../../../../../../..", r.join("usr/lib/imprint")).unwrap();
        // Dangling inside the root: refused, nothing written outside.
        let err = provide(r, &seed(), &[], &|| Ok(b"BINARY".to_vec()), &|| Ok(())).unwrap_err();
        assert!(crate::error_text(&err).contains("systemd"), "{err:#}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Resolving inside the root: written there, still nothing outside.
        let inside = r.join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        assert_eq!(run(r), Some(Agent::Installed { format: FORMAT }));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(inside.join(UNIT_NAME).is_file());
        // "..": clamped at the root.
        assert_eq!(std::fs::read(r.join("imprint")).unwrap(), b"BINARY");
    }

    #[test]
    fn cloud_init_gets_a_nocloud_seed_with_the_host_name() {
        let dir = os_root(true);
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc/cloud")).unwrap();
        std::fs::write(r.join("etc/cloud/cloud.cfg"), "").unwrap();
        let provided = provide(r, &seed(), &[], &|| Ok(b"B".to_vec()), &|| Ok(()))
            .unwrap()
            .unwrap();
        assert!(provided.cloud_init_seed);
        assert_eq!(provided.agent, Agent::Installed { format: FORMAT });
        let meta = std::fs::read_to_string(r.join(SEED_DIR).join("meta-data")).unwrap();
        assert_eq!(
            meta,
            "instance-id: imprint-0123456789abcdef-1800000000\nlocal-hostname: node-1\n"
        );
        let user = std::fs::read_to_string(r.join(SEED_DIR).join("user-data")).unwrap();
        assert!(user.starts_with("#cloud-config\n"));
        // Without cloud-init, no seed.
        let plain = os_root(true);
        let p = provide(
            plain.path(),
            &seed(),
            &[],
            &|| Ok(b"B".to_vec()),
            &|| Ok(()),
        )
        .unwrap()
        .unwrap();
        assert!(!p.cloud_init_seed);
        assert!(!plain.path().join(SEED_DIR).exists());
    }

    #[test]
    fn references_to_renamed_file_systems_are_rewritten_keeping_their_mode() {
        let dir = os_root(true);
        let r = dir.path();
        std::fs::create_dir_all(r.join("boot/grub")).unwrap();
        let old = "5eed0000-0000-4000-8000-000000000001";
        std::fs::write(
            r.join("etc/fstab"),
            format!("UUID={old} / ext4 defaults 0 1\n"),
        )
        .unwrap();
        std::fs::write(
            r.join("boot/grub/grub.cfg"),
            format!("search --fs-uuid --set=root {old}\nlinux /vmlinuz root=UUID={old}\n"),
        )
        .unwrap();
        std::fs::set_permissions(
            r.join("boot/grub/grub.cfg"),
            std::fs::Permissions::from_mode(0o444),
        )
        .unwrap();
        let renames = [Rename {
            partition: 2,
            old: old.into(),
            new: "0badc0de-0000-4000-8000-000000000002".into(),
        }];
        let p = provide(r, &seed(), &renames, &|| Ok(b"B".to_vec()), &|| Ok(()))
            .unwrap()
            .unwrap();
        assert_eq!(p.rewritten, ["/etc/fstab", "/boot/grub/grub.cfg"]);
        let fstab = std::fs::read_to_string(r.join("etc/fstab")).unwrap();
        assert_eq!(
            fstab,
            "UUID=0badc0de-0000-4000-8000-000000000002 / ext4 defaults 0 1\n"
        );
        let grub = std::fs::read_to_string(r.join("boot/grub/grub.cfg")).unwrap();
        assert!(!grub.contains(old) && grub.matches("0badc0de").count() == 2);
        let mode = std::fs::metadata(r.join("boot/grub/grub.cfg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
    }

    #[test]
    fn root_partitions_by_type_discoverable_first() {
        let part = |number, type_guid| Partition {
            number,
            type_guid,
            unique_guid: Guid([number as u8; 16]),
            first_lba: 0,
            last_lba: 0,
            attributes: 0,
            name: String::new(),
        };
        let layout = Layout {
            sector_size: 512,
            disk_guid: Guid([0; 16]),
            first_usable_lba: 34,
            last_usable_lba: 100,
            partitions: vec![
                part(1, crate::format::gpt::ESP_TYPE),
                part(2, LINUX_DATA),
                part(3, ROOT_X86_64),
            ],
        };
        let order: Vec<u32> = root_candidates(&layout).iter().map(|p| p.number).collect();
        assert_eq!(order, [3, 2]);
    }
}
