//! Everything that talks to the kernel beyond plain reads and writes lives here,
//! by concern: disks, mounts, power and kexec, EFI variables, sockets, this
//! process, and directory trees resolved inside a root. Other modules stay
//! portable and testable; each call here explains itself, and each `unsafe`
//! block says why it is sound.

mod disk;
mod efi;
mod mount;
mod net;
mod power;
mod proc;
mod root;

pub use disk::*;
pub use efi::*;
pub use mount::*;
pub use net::*;
pub use power::*;
pub use proc::*;
pub use root::*;
