//! The first-boot agent for images that carry none: after the deploy, the
//! deploy environment finds the installed OS's root file system, and when the OS
//! has no imprint of its own (a stock distribution image), installs itself there
//! with a systemd unit that runs `imprint firstboot` early in every boot. Where
//! the OS has cloud-init, it also writes a NoCloud seed with the host's settings,
//! so cloud-init applies them the way the OS expects.
//!
//! The root is found as `osroot.rs` says; references to renewed identities are
//! rewritten as `references.rs` says. Nothing is written unless the OS uses systemd and has no agent (or an older one); what was
//! done, or why not, goes into the state record. A failure here never fails the
//! deploy: the disk boots either way.

use super::disks::DiskInfo;
use super::identity::Rename;
use super::osroot::{MountAs, mount_root};
use super::references::{
    ROOT_REFERENCES, is_boot_candidate, rewrite_boot_partition, rewrite_references,
};
use crate::footprint::{
    DIR, FORMAT, FORMAT_FILE, OWN_AGENT_PATHS, REPORT_UNIT, REPORT_UNIT_NAME, UNIT, UNIT_DIR,
    UNIT_NAME,
};
use crate::format::gpt::Layout;
use crate::format::state::Agent;
use crate::sys::{self, Root};
use anyhow::{Context, Result};
use std::path::Path;

const MOUNT_POINT: &str = "/run/imprint/root";

/// What the OS in a root needs.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Nothing(Agent),
    Install,
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
fn install(root: &Root, binary: &[u8], reports: bool) -> Result<Agent> {
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
    // Enabled only while a report waits: for the first boot when there will be
    // one; later, by the first boot that leaves one.
    root.write_file(UNIT_DIR, REPORT_UNIT_NAME, REPORT_UNIT.as_bytes(), 0o644)
        .with_context(|| format!("writing /{UNIT_DIR}/{REPORT_UNIT_NAME}"))?;
    crate::footprint::want_reporter(root, reports).context("enabling the report unit")?;
    // Last: an interrupted install is retried by the next deploy.
    root.write_file(DIR, FORMAT_FILE, format!("{FORMAT}\n").as_bytes(), 0o644)
        .context("writing the agent format")?;
    Ok(Agent::Installed { format: FORMAT })
}

/// The host's own cloud-init files, as the repository serves them.
#[derive(Default)]
pub(super) struct HostData {
    pub user_data: Option<Vec<u8>>,
    pub network_config: Option<Vec<u8>>,
}

/// The per-host data a NoCloud seed carries.
pub(super) struct Seed {
    /// Unique per deploy, so cloud-init runs its first-boot modules again.
    pub instance_id: String,
    pub hostname: Option<String>,
    pub data: HostData,
    /// The deploy names a status server: the first boot will leave its report
    /// for the network, so an installed agent's report unit starts enabled.
    pub reports: bool,
    /// The image is generalized: what must be unique per machine is removed
    /// from the root before anything else is written to it.
    pub generalize: bool,
}

const SEED_DIR: &str = "var/lib/cloud/seed/nocloud";

fn has_cloud_init(root: &Root) -> bool {
    root.exists("usr/bin/cloud-init") || root.exists("etc/cloud/cloud.cfg")
}

/// Writes the NoCloud seed cloud-init reads on first boot: meta-data with the
/// instance id and host name; the host's user-data (else an empty cloud-config)
/// and network-config, as given. Mode 0600: user-data may hold secrets.
fn write_seed(root: &Root, seed: &Seed) -> Result<()> {
    // Both values are plain names (the command line checked the host name), so
    // they need no YAML quoting; the instance id is made here.
    let mut meta = format!("instance-id: {}\n", seed.instance_id);
    if let Some(h) = &seed.hostname {
        meta.push_str(&format!("local-hostname: {h}\n"));
    }
    root.write_file(SEED_DIR, "meta-data", meta.as_bytes(), 0o600)
        .context("writing the NoCloud meta-data")?;
    let user_data = seed
        .data
        .user_data
        .as_deref()
        .unwrap_or(b"#cloud-config\n{}\n");
    root.write_file(SEED_DIR, "user-data", user_data, 0o600)
        .context("writing the NoCloud user-data")?;
    if let Some(network) = &seed.data.network_config {
        root.write_file(SEED_DIR, "network-config", network, 0o600)
            .context("writing the NoCloud network-config")?;
    }
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
    /// For a generalized image: what was removed or emptied, or why it could
    /// not be.
    pub generalized: Option<Result<Vec<String>, String>>,
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
    if need == Need::Install || cloud || !renames.is_empty() || seed.generalize {
        remount_rw()?;
    }
    let root = Root::open(path)?;
    // First, so nothing written below (the seed, the agent) is taken for the
    // source machine's.
    let generalized = seed
        .generalize
        .then(|| crate::generalize::generalize(&root).map_err(|e| e.to_string()));
    let rewritten = rewrite_references(&root, ROOT_REFERENCES, renames)?;
    if cloud {
        write_seed(&root, seed)?;
    }
    let agent = match need {
        Need::Nothing(agent) => agent,
        Need::Install => install(&root, &binary()?, seed.reports)?,
    };
    Ok(Some(Provided {
        agent,
        cloud_init_seed: cloud,
        rewritten,
        generalized,
    }))
}

/// Gives the OS just written to `disk` (partition table `layout`) an agent if it
/// has none, and a NoCloud seed if it has cloud-init; rewrites references to
/// renamed file systems in its root, its ESP and a separate `/boot`. Never
/// fails: what it could not do is the reason in the returned agent, or a warning.
pub(super) fn ensure(
    disk: &DiskInfo,
    layout: &Layout,
    seed: &Seed,
    renames: &[Rename],
) -> Provided {
    let (mut provided, root_partition) = provide_root(disk, layout, seed, renames);
    if renames.is_empty() {
        return provided;
    }
    for p in &layout.partitions {
        let esp = p.type_guid == crate::format::gpt::ESP_TYPE;
        if Some(p.number) == root_partition || !(esp || is_boot_candidate(p)) {
            continue;
        }
        match rewrite_boot_partition(disk, p.number, esp, renames) {
            Ok(files) => provided.rewritten.extend(files),
            Err(e) => log::warn!(
                "rewriting the boot loader's references on partition {}: {}",
                p.number,
                crate::error_text(&e)
            ),
        }
    }
    provided
}

/// The root's agent and seed (see [`provide`]), and which partition the root is.
fn provide_root(
    disk: &DiskInfo,
    layout: &Layout,
    seed: &Seed,
    renames: &[Rename],
) -> (Provided, Option<u32>) {
    let skipped = |why: String| Provided {
        agent: Agent::Skipped(why),
        cloud_init_seed: false,
        rewritten: Vec::new(),
        generalized: None,
    };
    let mounted = match mount_root(
        layout,
        &|n| disk.wait_for_partition(n),
        MOUNT_POINT,
        MountAs::ReadOnly,
    ) {
        Ok(m) => m,
        Err(why) => return (skipped(why), None),
    };
    let (device, number) = (mounted.device.clone(), mounted.number);
    let remount = || {
        sys::unmount(MOUNT_POINT)
            .and_then(|()| sys::mount(&device, MOUNT_POINT, "ext4", false))
            .with_context(|| format!("mounting {device} read-write"))
    };
    let binary = || std::fs::read("/proc/self/exe").context("reading this program");
    let result = provide(Path::new(MOUNT_POINT), seed, renames, &binary, &remount);
    drop(mounted);
    let provided = match result {
        Ok(Some(provided)) => provided,
        Ok(None) => skipped(format!("{device}: no os-release")),
        Err(e) => skipped(format!(
            "installing the agent on {device} failed: {}",
            crate::error_text(&e)
        )),
    };
    (provided, Some(number))
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
    use super::super::osroot::root_candidates;
    use super::super::references::BOOT_REFERENCES;
    use super::*;
    use crate::format::dps::{LINUX_DATA, ROOT_X86_64};
    use crate::format::gpt::{Guid, Layout, Partition};
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
            data: HostData::default(),
            reports: false,
            generalize: false,
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
        // The report unit waits, disabled, for a first boot that leaves a report.
        let report =
            std::fs::read_to_string(r.join(format!("{UNIT_DIR}/{REPORT_UNIT_NAME}"))).unwrap();
        assert!(report.contains("ExecStart=/usr/lib/imprint/imprint report"));
        assert!(
            !r.join(format!("{UNIT_DIR}/multi-user.target.wants"))
                .exists()
        );
        // Deployed again over it: this agent's format is there, nothing to do.
        assert_eq!(run(r), Some(Agent::Own));
    }

    #[test]
    fn a_deploy_that_reports_to_a_server_enables_the_report_unit_for_the_first_boot() {
        let dir = os_root(true);
        let r = dir.path();
        let seed = Seed {
            reports: true,
            ..seed()
        };
        let provided = provide(r, &seed, &[], &|| Ok(b"B".to_vec()), &|| Ok(()))
            .unwrap()
            .unwrap();
        assert_eq!(provided.agent, Agent::Installed { format: FORMAT });
        assert_eq!(
            std::fs::read_link(r.join(format!(
                "{UNIT_DIR}/multi-user.target.wants/{REPORT_UNIT_NAME}"
            )))
            .unwrap(),
            Path::new("/etc/systemd/system/imprint-report.service")
        );
    }

    #[test]
    fn a_generalized_image_loses_the_source_identity_before_its_seed_is_written() {
        let dir = os_root(true);
        let r = dir.path();
        for (path, text) in [
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("etc/ssh/ssh_host_ed25519_key", "SOURCE KEY"),
            ("etc/cloud/cloud.cfg", "datasource_list: [NoCloud]\n"),
            ("var/lib/cloud/instances/source/boot-finished", "1"),
        ] {
            std::fs::create_dir_all(r.join(path).parent().unwrap()).unwrap();
            std::fs::write(r.join(path), text).unwrap();
        }
        let keep = |generalize| {
            let seed = Seed {
                generalize,
                ..seed()
            };
            provide(r, &seed, &[], &|| Ok(b"B".to_vec()), &|| Ok(()))
                .unwrap()
                .unwrap()
        };
        // Not generalized: the identity stays.
        assert_eq!(keep(false).generalized, None);
        assert!(r.join("etc/ssh/ssh_host_ed25519_key").exists());
        let provided = keep(true);
        let changed = provided.generalized.unwrap().unwrap();
        assert!(
            changed.contains(&"/etc/machine-id".to_string()),
            "{changed:?}"
        );
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(!r.join("var/lib/cloud/instances/source").exists());
        // This deploy's seed is written after, and stays.
        assert!(provided.cloud_init_seed);
        let meta = std::fs::read_to_string(r.join(SEED_DIR).join("meta-data")).unwrap();
        assert!(meta.contains("imprint-0123456789abcdef"), "{meta}");
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
    fn the_hosts_user_data_and_network_config_go_into_the_seed_as_given() {
        let dir = os_root(true);
        let r = dir.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/cloud-init"), "").unwrap();
        let user = b"#cloud-config\nwrite_files:\n  - path: /x\n".to_vec();
        let net = b"version: 2\nethernets: {}\n".to_vec();
        let seed = Seed {
            data: HostData {
                user_data: Some(user.clone()),
                network_config: Some(net.clone()),
            },
            ..seed()
        };
        provide(r, &seed, &[], &|| Ok(b"B".to_vec()), &|| Ok(()))
            .unwrap()
            .unwrap();
        let dir = r.join(SEED_DIR);
        assert_eq!(std::fs::read(dir.join("user-data")).unwrap(), user);
        assert_eq!(std::fs::read(dir.join("network-config")).unwrap(), net);
        for name in ["meta-data", "user-data", "network-config"] {
            let mode = std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
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

    /// Boot loader entries, the resume device, and a separate /boot or ESP: every
    /// place a stock OS names a file system by identity.
    #[test]
    fn references_in_boot_entries_resume_and_boot_partitions_are_rewritten() {
        let old = "5eed0000-0000-4000-8000-000000000001";
        let swap = "5eed0000-0000-4000-8000-0000000000aa";
        let renames = [
            Rename {
                partition: 2,
                old: old.into(),
                new: "0badc0de-0000-4000-8000-000000000002".into(),
            },
            Rename {
                partition: 3,
                old: swap.into(),
                new: "0badc0de-0000-4000-8000-0000000000bb".into(),
            },
        ];
        let put = |root: &Path, rel: &str, text: String| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(
            r,
            "boot/loader/entries/a.conf",
            format!("options root=UUID={old} resume=UUID={swap}\n"),
        );
        put(
            r,
            "boot/loader/entries/b.conf",
            format!("options root=UUID={old}\n"),
        );
        put(r, "boot/loader/entries/notes.txt", format!("{old}\n"));
        put(
            r,
            "etc/initramfs-tools/conf.d/resume",
            format!("RESUME=UUID={swap}\n"),
        );
        put(r, "etc/fstab", format!("UUID={swap} none swap sw 0 0\n"));
        let done = rewrite_references(&Root::open(r).unwrap(), ROOT_REFERENCES, &renames).unwrap();
        assert_eq!(
            done,
            [
                "/etc/fstab",
                "/etc/initramfs-tools/conf.d/resume",
                "/boot/loader/entries/a.conf",
                "/boot/loader/entries/b.conf"
            ]
        );
        // Only the listed patterns: other files are not touched.
        let notes = std::fs::read_to_string(r.join("boot/loader/entries/notes.txt")).unwrap();
        assert!(notes.contains(old));
        let a = std::fs::read_to_string(r.join("boot/loader/entries/a.conf")).unwrap();
        assert!(!a.contains(old) && !a.contains(swap), "{a}");

        // A separate /boot and an ESP.
        let boot = tempfile::tempdir().unwrap();
        let b = boot.path();
        put(
            b,
            "grub/grub.cfg",
            format!("search --fs-uuid --set=root {old}\n"),
        );
        put(
            b,
            "EFI/debian/grub.cfg",
            format!("search.fs_uuid {old} root\n"),
        );
        put(b, "EFI/BOOT/BOOTX64.CSV", format!("{old}\n"));
        let done = rewrite_references(&Root::open(b).unwrap(), BOOT_REFERENCES, &renames).unwrap();
        assert_eq!(done, ["/grub/grub.cfg", "/EFI/debian/grub.cfg"]);
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
