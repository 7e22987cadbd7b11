//! UEFI variables through efivarfs.

use super::mount::mount;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// True when the machine booted through UEFI.
pub fn is_uefi() -> bool {
    Path::new("/sys/firmware/efi").exists()
}

/// Mounts efivarfs if it is not mounted yet.
pub fn mount_efivars() -> io::Result<()> {
    if Path::new(EFIVARS)
        .join(format!("BootOrder-{}", crate::format::efi::GLOBAL_GUID))
        .exists()
    {
        return Ok(());
    }
    mount("efivarfs", EFIVARS, "efivarfs", false)
}

/// Reads an EFI variable (without its 4-byte attribute prefix); `None` if unset.
pub fn efivar_read(name: &str) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(Path::new(EFIVARS).join(name)) {
        Ok(bytes) if bytes.len() >= 4 => Ok(Some(bytes[4..].to_vec())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Names of the EFI variables present.
pub fn efivar_names() -> io::Result<Vec<String>> {
    Ok(std::fs::read_dir(EFIVARS)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Writes an EFI variable (non-volatile, boot and runtime access). efivarfs marks
/// existing variables immutable; the flag is lifted for the write.
pub fn efivar_write(name: &str, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let path = Path::new(EFIVARS).join(name);
    if let Ok(f) = File::open(&path)
        && let Ok(flags) = rustix::fs::ioctl_getflags(&f)
        && flags.contains(rustix::fs::IFlags::IMMUTABLE)
    {
        rustix::fs::ioctl_setflags(&f, flags - rustix::fs::IFlags::IMMUTABLE)?;
    }
    let mut bytes = crate::format::efi::ATTRIBUTES.to_le_bytes().to_vec();
    bytes.extend_from_slice(data);
    // One write: efivarfs takes each write as a whole variable.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    f.write_all(&bytes)
}

/// Deletes an EFI variable; nothing to do if it is unset. efivarfs may mark
/// variables immutable; the flag is lifted first.
pub fn efivar_delete(name: &str) -> io::Result<()> {
    let path = Path::new(EFIVARS).join(name);
    match File::open(&path) {
        Ok(f) => {
            if let Ok(flags) = rustix::fs::ioctl_getflags(&f)
                && flags.contains(rustix::fs::IFlags::IMMUTABLE)
            {
                rustix::fs::ioctl_setflags(&f, flags - rustix::fs::IFlags::IMMUTABLE)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
