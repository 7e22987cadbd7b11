//! The host role: building and checking repositories, serving them (with the
//! status endpoint), and packing the deploy environment's initramfs.

pub mod access;
pub mod fleet;
pub mod initramfs;
pub mod media;
pub mod repo;
pub mod serve;
pub mod statuses;
