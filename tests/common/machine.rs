//! The machine the end-to-end QEMU tests boot: its work directory (consoles,
//! disks, firmware variables), its firmware, its disks, the repository its
//! deploy environment deploys from and the network it boots from. A test
//! builds one, then runs it from the deploy environment in RAM, from its disks
//! through the firmware, or from the network, and reads the console.

use super::disks::sparse_disk;
use super::vm::{Boot, boot, cmdline};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// What a run of a [`Machine`] starts from.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// The deploy environment from RAM (QEMU's `-kernel` and `-initrd`) on
    /// QEMU's user network, with these kernel arguments after the repository's
    /// (see [`Machine::cmdline`]).
    RamDisk(&'a str),
    /// The disks, through the firmware, on the installed OS's network
    /// ([`Machine::os_net`]).
    Disks,
    /// The network first in the boot order ([`Machine::net`]).
    Network,
}

/// One machine under test. Built with [`Machine::new`] and the builders after
/// it; its fields may be changed between runs (a test's own network for the
/// installed OS, say).
#[derive(Clone, Debug)]
pub struct Machine {
    /// Where its consoles (`NAME.console`) go, and its blank disks and
    /// firmware variables are.
    pub dir: PathBuf,
    /// "bios" (SeaBIOS) or "uefi" (OVMF).
    pub firmware: &'static str,
    /// Its EFI variables (`vars.fd` in `dir`), kept from one run to the next;
    /// under UEFI only.
    pub vars: PathBuf,
    /// Its disks, in order: /dev/vda, /dev/vdb, ...
    pub disks: Vec<PathBuf>,
    /// The repository a RAM-disk run deploys from (`imprint.repo=`), as the
    /// host reaches it.
    pub repo: Option<String>,
    /// Kernel arguments every RAM-disk run has after its own.
    pub args: String,
    /// The `qemu/run --net` of a run from the network.
    pub net: String,
    /// The network of a run from the disks: "none", unless the installed OS
    /// needs one.
    pub os_net: &'static str,
    /// Its NIC's MAC address (default QEMU's first, 52:54:00:12:34:56).
    pub mac: Option<String>,
    /// How long a run may take, in seconds.
    pub timeout: u64,
}

impl Machine {
    /// A machine with no disks yet, working in `dir`, with `firmware`, QEMU's
    /// user network and `qemu/run`'s usual time limit.
    pub fn new(dir: &Path, firmware: &'static str) -> Machine {
        Machine {
            dir: dir.to_path_buf(),
            firmware,
            vars: dir.join("vars.fd"),
            disks: Vec::new(),
            repo: None,
            args: String::new(),
            net: "user".to_string(),
            os_net: "none",
            mac: None,
            timeout: Boot::default().timeout,
        }
    }

    /// With these disks attached after the ones it has.
    pub fn with_disks(mut self, disks: impl IntoIterator<Item = PathBuf>) -> Machine {
        self.disks.extend(disks);
        self
    }

    /// With a blank (sparse) disk of `size` bytes, `name` in its directory,
    /// attached after the ones it has.
    pub fn blank_disk(self, name: &str, size: u64) -> Machine {
        let disk = self.dir.join(name);
        sparse_disk(&disk, size);
        self.with_disks([disk])
    }

    /// Deploying from the repository at `url` (as the host reaches it).
    pub fn repo(mut self, url: &str) -> Machine {
        self.repo = Some(url.to_string());
        self
    }

    /// With `args` on the kernel command line of every RAM-disk run, after
    /// the run's own.
    pub fn args(mut self, args: &str) -> Machine {
        self.args = args.to_string();
        self
    }

    /// Booting from the network `net` (a `qemu/run --net`) when it runs from
    /// the network.
    pub fn network(mut self, net: &str) -> Machine {
        self.net = net.to_string();
        self
    }

    /// With the MAC address `mac`.
    pub fn mac(mut self, mac: &str) -> Machine {
        self.mac = Some(mac.to_string());
        self
    }

    /// Each run taking `seconds` at most.
    pub fn timeout(mut self, seconds: u64) -> Machine {
        self.timeout = seconds;
        self
    }

    /// The same machine with only the disks numbered in `keep` (from 0), in
    /// that order: the others taken out.
    pub fn only(&self, keep: &[usize]) -> Machine {
        Machine {
            disks: keep.iter().map(|&i| self.disks[i].clone()).collect(),
            ..self.clone()
        }
    }

    /// The kernel command line of a RAM-disk run with `extra`: the console,
    /// the repository, `extra`, then the machine's own arguments.
    pub fn cmdline(&self, extra: &str) -> String {
        let repo = self
            .repo
            .as_deref()
            .expect("a RAM-disk run of a machine with no repository");
        if self.args.is_empty() {
            cmdline(repo, extra)
        } else {
            cmdline(repo, &format!("{extra} {}", self.args))
        }
    }

    /// How a run from `start` boots: the machine's firmware and variables,
    /// the network and kernel command line `start` has, the machine's MAC and
    /// time limit. A run of its own changes what it needs:
    /// `Boot { usb: Some(stick), ..m.spec(Start::Disks) }`.
    pub fn spec(&self, start: Start) -> Boot<'_> {
        let (net, append) = match start {
            Start::RamDisk(extra) => ("user", Some(self.cmdline(extra))),
            Start::Disks => (self.os_net, None),
            Start::Network => (self.net.as_str(), None),
        };
        Boot {
            firmware: self.firmware,
            vars: (self.firmware == "uefi").then_some(self.vars.as_path()),
            append,
            net,
            timeout: self.timeout,
            mac: self.mac.as_deref(),
            ..Boot::default()
        }
    }

    /// Runs it as `b` says (see [`Machine::spec`]), all its disks attached,
    /// the console going to `NAME.console`: the exit status and the console.
    pub fn try_run_with(&self, name: &str, b: Boot) -> (ExitStatus, String) {
        let disks: Vec<&Path> = self.disks.iter().map(PathBuf::as_path).collect();
        boot(&self.dir, name, b, &disks)
    }

    /// Runs it from `start`: the exit status and the console.
    pub fn try_run(&self, name: &str, start: Start) -> (ExitStatus, String) {
        self.try_run_with(name, self.spec(start))
    }

    /// Runs it from `start`, which must end by itself (power off or reboot)
    /// in time; returns the console.
    pub fn run(&self, name: &str, start: Start) -> String {
        let (status, console) = self.try_run(name, start);
        assert!(status.success(), "{name}: {status:?}\n{console}");
        console
    }

    /// Runs the deploy environment from RAM with `extra` on its kernel
    /// command line; returns the console.
    pub fn ramdisk(&self, name: &str, extra: &str) -> String {
        self.run(name, Start::RamDisk(extra))
    }

    /// Boots the disks through the firmware; returns the console.
    pub fn boot_disks(&self, name: &str) -> String {
        self.run(name, Start::Disks)
    }

    /// Boots from the network; returns the console.
    pub fn netboot(&self, name: &str) -> String {
        self.run(name, Start::Network)
    }

    /// Runs it from `start` with its power cut (`qemu/run --cut-on`,
    /// [`super::vm::CUT_STATUS`]) `after_ms` after the first console line
    /// holding `on`, each disk taking at most `write_iops` write requests a
    /// second (see [`Boot::write_iops`]): the exit status and the console.
    pub fn cut(
        &self,
        name: &str,
        start: Start,
        on: &str,
        after_ms: u64,
        write_iops: &[u32],
    ) -> (ExitStatus, String) {
        let cut_on = [on];
        self.try_run_with(
            name,
            Boot {
                cut_on: &cut_on,
                cut_after_ms: after_ms,
                write_iops,
                ..self.spec(start)
            },
        )
    }
}
