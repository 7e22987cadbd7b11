//! docs/cli.md is the command line's own `--help`, every command and
//! subcommand, so the reference cannot drift from the binary. This test
//! regenerates it and fails when the file differs; `IMPRINT_WRITE_DOCS=1 cargo
//! test --test cli_reference` writes it.

use std::path::Path;
use std::process::Command;

fn help(words: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(words)
        .arg("--help")
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "imprint {words:?} --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a help text lists (clap's "Commands:" section), but `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let word = l.split_whitespace().next()?;
            // Continuation lines of a long description are indented further.
            (l.as_bytes().get(2) != Some(&b' ') && word != "help").then(|| word.to_string())
        })
        .collect()
}

fn section(words: &mut Vec<String>, out: &mut String) {
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let text = help(&args);
    let title = std::iter::once("imprint")
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    out.push_str(&format!("\n## {title}\n\n```\n{}\n```\n", text.trim_end()));
    for sub in subcommands(&text) {
        words.push(sub);
        section(words, out);
        words.pop();
    }
}

#[test]
fn the_cli_reference_is_the_binarys_own_help() {
    let mut text = String::from(
        "# Command-line reference\n\n\
         Every command's `--help`, as this build prints it (generated: \
         `IMPRINT_WRITE_DOCS=1 cargo test --test cli_reference`; CI checks it is \
         current). What the commands do, and the server's limits, are in \
         [commands.md](commands.md).\n",
    );
    section(&mut Vec::new(), &mut text);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    if std::env::var("IMPRINT_WRITE_DOCS").as_deref() == Ok("1") {
        std::fs::write(&path, &text).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == text,
        "docs/cli.md is not what this build's --help prints: run \
         `IMPRINT_WRITE_DOCS=1 cargo test --test cli_reference` and commit it"
    );
    // Every command is in it, the installed OS's too.
    for command in ["image add", "serve", "deploy", "media build", "firstboot"] {
        assert!(
            text.contains(&format!("\n## imprint {command}\n")),
            "{command}"
        );
    }
}
