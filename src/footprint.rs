//! The first-boot agent's footprint in an installed OS's root: where the
//! deploy environment installs it (a stock image carries none), its systemd
//! units, and where the first boot leaves its report for the network. The
//! deploy environment writes it; the installed OS's agent keeps it.

use crate::sys::Root;

/// The agent layout this build installs: the binary and unit below. An image
/// whose agent says a format at least this new is left alone. 4: the agent
/// makes SSH host keys for a generalized copy, so an older one is replaced.
pub const FORMAT: u32 = 4;
pub const DIR: &str = "usr/lib/imprint";
pub const FORMAT_FILE: &str = "agent-format";
pub const UNIT_DIR: &str = "etc/systemd/system";
pub const UNIT_NAME: &str = "imprint-firstboot.service";
pub const UNIT: &str = "\
[Unit]
Description=imprint first boot: host settings, migration from the previous OS, commit
DefaultDependencies=no
Wants=network-pre.target
After=local-fs.target systemd-remount-fs.service
Before=network-pre.target sysinit.target shutdown.target systemd-machine-id-commit.service
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/imprint/imprint firstboot
# At every shutdown, while the root is still mounted: the configuration the next
# upgrade migrates, captured by the OS itself.
ExecStop=/usr/lib/imprint/imprint prepare-upgrade
TimeoutStopSec=60
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
";
/// The unit that runs `imprint report` once the network is online.
pub const REPORT_UNIT_NAME: &str = "imprint-report.service";
/// Format 2: the first boot's report to the provisioning server goes out once
/// the network is up (the first-boot unit runs before it). Format 3: that unit
/// is enabled only while a report waits (see [`want_reporter`]).
pub const REPORT_UNIT: &str = "\
[Unit]
Description=imprint: report this OS's first boot to the server that deployed it
Wants=network-online.target
After=network-online.target imprint-firstboot.service

[Service]
Type=oneshot
ExecStart=/usr/lib/imprint/imprint report --patience 30
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";
/// Where an image's own imprint would be.
pub const OWN_AGENT_PATHS: &[&str] = &[
    "usr/bin/imprint",
    "usr/sbin/imprint",
    "usr/local/bin/imprint",
    "usr/local/sbin/imprint",
];
/// Where a report waits for the network when the first boot runs before it.
pub const PENDING_REPORT: &str = "var/lib/imprint/report.json";
/// Where the report unit is enabled while a report waits.
pub const REPORT_WANTS_DIR: &str = "etc/systemd/system/multi-user.target.wants";

/// Enables (or disables) the report unit in `root`, where it is installed. It
/// pulls in network-online.target, which waits minutes on a machine whose links
/// never come up, so it is enabled only while a report waits. Returns whether
/// the unit is there.
pub fn want_reporter(root: &Root, wanted: bool) -> std::io::Result<bool> {
    if !wanted {
        root.remove(REPORT_WANTS_DIR, REPORT_UNIT_NAME)?;
        return Ok(root.exists(&format!("{UNIT_DIR}/{REPORT_UNIT_NAME}")));
    }
    if !root.exists(&format!("{UNIT_DIR}/{REPORT_UNIT_NAME}")) {
        return Ok(false);
    }
    root.symlink(
        REPORT_WANTS_DIR,
        REPORT_UNIT_NAME,
        &format!("/{UNIT_DIR}/{REPORT_UNIT_NAME}"),
    )?;
    Ok(true)
}
