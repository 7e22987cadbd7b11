//! imprint: a minimal bootable deploy environment.
//!
//! Layout: `format` holds pure formats (no I/O beyond `Read`/`Write`/`Seek`),
//! `repo` the on-disk repository, `source` where chunks come from (directory or
//! HTTP), `engine` the deploy engine shared by the host CLI and PID 1, `serve`
//! the embedded repository server, and `sys` every syscall that is not plain std.

pub mod engine;
pub mod firstboot;
pub mod format;
pub mod initramfs;
pub mod migrate;
pub mod pid1;
pub mod repo;
pub mod serve;
pub mod source;
pub mod statedisk;
pub mod sys;
pub mod upgrade;

/// An error and its causes as one line, each cause added only when the message
/// so far does not already say it (error types here often include their source).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
