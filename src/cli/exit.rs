//! Exit codes: one list for the numbers, their help text and which error gets which.

use imprint::engine::{DeployError, TargetError};
use imprint::format::signature::SignatureError;
use imprint::source::FetchError;
use std::fmt::Write;
use std::process::ExitCode;

/// How `imprint` ends. Scripts branch on these numbers: never renumber them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    /// Clap exits with this number on its own parse errors.
    Usage = 2,
    Untrusted = 3,
    Target = 4,
    Source = 5,
}

impl Exit {
    /// In the order the help text lists them.
    const ALL: [Exit; 6] = [
        Exit::Success,
        Exit::Failure,
        Exit::Usage,
        Exit::Untrusted,
        Exit::Target,
        Exit::Source,
    ];

    /// What the code tells the caller, as `--help` lists it.
    const fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Failure => "failure (verification mismatch, repository problems, other errors)",
            Exit::Usage => "usage error",
            Exit::Untrusted => {
                "manifest not trusted or invalid (bad pin, bad signature, malformed manifest or ref)"
            }
            Exit::Target => "target problem (cannot open, too small, busy, write error)",
            Exit::Source => {
                "source problem (not found, denied, server or network failure after retries)"
            }
        }
    }

    /// The `Exit codes:` section of `imprint --help` and `imprint deploy --help`.
    pub fn help() -> String {
        let mut text = String::from("Exit codes:");
        for code in Exit::ALL {
            let _ = write!(text, "\n  {}  {}", code as u8, code.meaning());
        }
        text
    }

    /// The code for a failed command: the first cause in the chain that says
    /// whose fault it was (trust, target or source) decides.
    pub fn of(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if let Some(deploy) = cause.downcast_ref::<DeployError>() {
                return match deploy {
                    DeployError::Fetch(_) => Exit::Source,
                    DeployError::Target(_) | DeployError::TargetIo { .. } => Exit::Target,
                    _ => Exit::Untrusted,
                };
            }
            if cause.is::<FetchError>() {
                return Exit::Source;
            }
            if cause.is::<TargetError>() {
                return Exit::Target;
            }
            if cause.is::<SignatureError>() {
                return Exit::Untrusted;
            }
        }
        Exit::Failure
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_code_in_order() {
        let help = Exit::help();
        let numbers: Vec<&str> = help
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(numbers, ["0", "1", "2", "3", "4", "5"]);
    }

    #[test]
    fn usage_matches_clap() {
        let error = clap::Error::new(clap::error::ErrorKind::InvalidValue);
        assert_eq!(error.exit_code(), Exit::Usage as i32);
    }

    #[test]
    fn errors_map_to_whose_fault() {
        let untrusted = anyhow::Error::new(DeployError::BadRef {
            image: "x".into(),
            reason: "y".into(),
        })
        .context("deploying to disk.img");
        assert_eq!(Exit::of(&untrusted), Exit::Untrusted);
        assert_eq!(Exit::of(&anyhow::anyhow!("other")), Exit::Failure);
    }
}
