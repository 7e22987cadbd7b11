//! The `imprint` binary. One program, three roles: picked by the name it was
//! called by (modprobe, the deploy process PID 1 starts), its process id, or else
//! the command line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The initramfs links /sbin/modprobe to this binary for the kernel's module
    // autoloader.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if argv0.as_encoded_bytes().ends_with(b"modprobe") {
        let args: Vec<String> = std::env::args().collect();
        return ExitCode::from(imprint::pid1::modprobe_main(&args) as u8);
    }
    if argv0
        .as_encoded_bytes()
        .ends_with(imprint::pid1::DEPLOY_PROCESS.as_bytes())
    {
        imprint::pid1::deploy_process_main();
    }
    if imprint::sys::is_pid1() {
        imprint::pid1::main();
    }
    cli::main()
}
