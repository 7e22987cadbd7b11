//! imprint: a minimal bootable deploy environment.
//!
//! Layout: `format` holds pure formats (no I/O beyond `Read`/`Write`/`Seek`),
//! `repo` the on-disk repository, `source` where chunks come from (directory or
//! HTTP), `engine` the deploy engine shared by the host CLI and PID 1, `serve`
//! the embedded repository server, and `sys` every syscall that is not plain std.

pub mod engine;
pub mod format;
pub mod repo;
pub mod serve;
pub mod source;
pub mod sys;
