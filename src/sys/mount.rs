//! Mounting and unmounting file systems.

use std::io;

/// Mounts a pseudo or real file system; "already mounted" counts as success.
pub fn mount(source: &str, target: &str, fstype: &str, read_only: bool) -> io::Result<()> {
    let mut flags = rustix::mount::MountFlags::NOSUID;
    if read_only {
        flags |= rustix::mount::MountFlags::RDONLY;
    }
    std::fs::create_dir_all(target)?;
    match rustix::mount::mount(source, target, fstype, flags, None::<&std::ffi::CStr>) {
        Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mounts an ext4 file system read-only without replaying its journal: nothing
/// is written to the device, even when the file system was not cleanly
/// unmounted (what was only in the journal is then not seen).
pub fn mount_ext4_untouched(source: &str, target: &str) -> io::Result<()> {
    let flags = rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::RDONLY;
    std::fs::create_dir_all(target)?;
    rustix::mount::mount(source, target, "ext4", flags, c"norecovery").map_err(Into::into)
}

pub fn unmount(target: &str) -> io::Result<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(Into::into)
}
