//! Syncing, restarting and powering off, and kexec.

use std::fs::File;
use std::io;

pub fn sync_all() {
    rustix::fs::sync();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

/// Syncs and restarts or powers off the machine. Returns only if the kernel
/// refused (then the caller decides what is left to do).
pub fn power(action: PowerAction) -> io::Error {
    sync_all();
    let cmd = match action {
        PowerAction::Reboot => rustix::system::RebootCommand::Restart,
        PowerAction::Poweroff => rustix::system::RebootCommand::PowerOff,
    };
    match rustix::system::reboot(cmd) {
        Ok(()) => io::Error::other("reboot returned"),
        Err(e) => e.into(),
    }
}

/// Loads a kernel (and initrd) to boot with kexec (kexec_file_load, so the kernel
/// checks the image itself). No crate wraps this system call; it goes through
/// libc's syscall().
pub fn kexec_load(kernel: &File, initrd: Option<&File>, cmdline: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 4;
    let cmdline = std::ffi::CString::new(cmdline)
        .map_err(|_| io::Error::other("kernel command line contains a NUL byte"))?;
    let bytes = cmdline.as_bytes_with_nul();
    let (initrd_fd, flags) = match initrd {
        Some(f) => (f.as_raw_fd(), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    // SAFETY: kexec_file_load reads the two fds and `bytes.len()` bytes at the
    // command line pointer, which is a live, NUL-terminated CString for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Boots the kernel loaded by [`kexec_load`]. Returns only on failure.
pub fn kexec_reboot() -> io::Error {
    sync_all();
    match rustix::system::reboot(rustix::system::RebootCommand::Kexec) {
        Ok(()) => io::Error::other("kexec returned"),
        Err(e) => e.into(),
    }
}
