//! The `imprint` command line: the parser, dispatch to the commands of each role
//! (on a host: [`image`], [`serve`], [`deploy`], [`boot`]; in the installed OS:
//! [`installed`]), logging and error reporting. Each command's arguments are
//! beside it.

mod boot;
mod capture;
mod deploy;
mod exit;
mod host;
mod image;
mod installed;
mod serve;

use anyhow::Result;
use boot::{InitramfsCommand, MediaCommand};
use clap::{Parser, Subcommand};
use deploy::DiskCommand;
use exit::Exit;
use host::HostCommand;
use image::{ImageCommand, RepoCommand};
use std::io::Write as _;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "imprint",
    version,
    about = "Verified, resumable, delta-aware disk imaging",
    after_help = Exit::help()
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add, list and inspect images in a repository.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Repository maintenance.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Create an ed25519 key pair for signing manifests.
    Keygen(image::KeygenArgs),
    /// Serve a repository over HTTP, and collect status events; with --hosts,
    /// the provisioning server for network-booted machines too.
    Serve(serve::ServeArgs),
    /// The machines a provisioning server (`imprint serve --hosts`) knows.
    #[command(subcommand)]
    Host(HostCommand),
    /// Deploy an image onto a disk or file.
    #[command(after_help = Exit::help())]
    Deploy(deploy::DeployArgs),
    /// Disk checks.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Read a disk (or disk image) into a repository served by `imprint serve
    /// --capture-token`: only blocks in use, only chunks it lacks.
    Capture(capture::CaptureArgs),
    /// In the installed OS: read the state record, apply host settings, commit.
    Firstboot(installed::FirstbootArgs),
    /// In the installed OS: print what the state record says.
    Status,
    /// In the installed OS: send the first boot's report once the network is up.
    Report(installed::ReportArgs),
    /// Undo an upgrade that has not committed (BIOS: restore the old boot record).
    Rollback,
    /// In the installed OS: capture its configuration for the next OS to migrate.
    PrepareUpgrade(installed::PrepareUpgradeArgs),
    /// Build the deploy environment's initramfs.
    #[command(subcommand)]
    Initramfs(InitramfsCommand),
    /// Build boot media (USB stick, CD/DVD) that deploy with no network.
    #[command(subcommand)]
    Media(MediaCommand),
}

/// Parses the command line, runs the command and turns its outcome into the
/// process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    Logger::install(cli.verbose);
    let exit = run(cli.command).unwrap_or_else(|error| {
        eprintln!("imprint: error: {}", imprint::error_text(&error));
        Exit::of(&error)
    });
    exit.into()
}

fn run(command: Command) -> Result<Exit> {
    match command {
        Command::Image(ImageCommand::Add(args)) => image::image_add(&args),
        Command::Image(ImageCommand::Ls(args)) => image::image_ls(&args),
        Command::Image(ImageCommand::Inspect(args)) => image::image_inspect(&args),
        Command::Image(ImageCommand::Sign(args)) => image::image_sign(&args),
        Command::Repo(RepoCommand::Check(args)) => image::repo_check(&args),
        Command::Keygen(args) => image::keygen(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Host(HostCommand::Reprovision(args)) => host::reprovision(&args),
        Command::Host(HostCommand::Show(args)) => host::show(&args),
        Command::Host(HostCommand::Ls(args)) => host::ls(&args),
        Command::Deploy(args) => deploy::deploy(&args),
        Command::Disk(DiskCommand::Verify(args)) => deploy::disk_verify(&args),
        Command::Capture(args) => capture::capture(&args),
        Command::Initramfs(InitramfsCommand::Build(args)) => boot::initramfs_build(&args),
        Command::Media(MediaCommand::Build(args)) => boot::media_build(&args),
        Command::Firstboot(args) => installed::firstboot(&args),
        Command::Status => installed::status(),
        Command::Rollback => installed::rollback(),
        Command::Report(args) => installed::report(&args),
        Command::PrepareUpgrade(args) => installed::prepare_upgrade(&args),
    }
}

/// Log lines go to stderr as `imprint: <level>: <message>`.
struct Logger {
    level: log::LevelFilter,
}

impl Logger {
    fn install(verbose: u8) {
        let level = match verbose {
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        let logger = Box::leak(Box::new(Logger { level }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_lowercase();
            // A closed stderr must not stop a server: the line is dropped.
            let _ = writeln!(
                std::io::stderr().lock(),
                "imprint: {level}: {}",
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// An image reference from the command line (`NAME:TAG` or `sha256:HEX`), for
/// every command that takes one.
fn parse_image_ref(text: &str) -> Result<imprint::format::digest::ImageRef> {
    text.parse::<imprint::format::digest::ImageRef>()
        .map_err(|e| imprint::engine::DeployError::BadRef {
            image: text.to_string(),
            reason: e.to_string(),
        })
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn deploy_help_lists_exit_codes() {
        let Err(help) = Cli::try_parse_from(["imprint", "deploy", "--help"]) else {
            panic!("--help parsed as a command");
        };
        assert!(help.to_string().contains(&Exit::help()), "{help}");
    }

    #[test]
    fn timeout_goes_with_either_source() {
        for source in [["--repo", "dir"], ["--url", "http://host:8080"]] {
            let args = ["imprint", "deploy", "--image", "os:1", "--disk", "disk.img"];
            let timeout = ["--timeout", "5"];
            let parsed = Cli::try_parse_from(args.iter().chain(&source).chain(&timeout));
            assert!(parsed.is_ok(), "{source:?}");
        }
    }
}
