//! What may go into a boot script or a kernel command line that imprint writes.
//!
//! iPXE splits a script line on white space, takes a word `;`, `||` or `&&` as
//! the start of another command and a word starting with `#` as the start of a
//! comment, expands `${...}` in any word, and joins a line ending in `\` to the
//! next (see its `exec.c` and `script.c`). Linux ends its own parameters at a
//! word `--` and groups words in `"`; GRUB's metacharacters are braces, `|`,
//! `&`, `$`, `;`, angle brackets and quotes. A value that contains none of these
//! can only ever be one argument of the command it was written into.
//!
//! So every value imprint puts into a script or command line, whether a machine
//! sent it (an error it reported) or the operator wrote it (an inventory entry),
//! passes [`safe`]: it keeps letters, digits and `- . _ ~ : / ? = + , @ % * ( ) [
//! ]` and replaces anything else. The inventory is checked with [`is_word`],
//! the same function, so a value that would be changed is refused where it is
//! written, with its line.

use std::borrow::Cow;

/// Longest text [`safe`] keeps, in characters.
pub const MAX_TEXT: usize = 400;
/// Longest word [`is_word`] accepts, in bytes.
pub const MAX_WORD: usize = 1024;
/// What [`safe`] puts in place of a character it does not keep.
pub const REPLACEMENT: char = '?';

/// What a value becomes in a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Words of a message (an `echo`): spaces stay, as word breaks.
    Text,
    /// One argument (a URL, a kernel parameter): no spaces.
    Word,
}

/// The characters a value keeps, besides letters and digits.
const PUNCTUATION: &[u8] = b"-._~:/?=+,@%*()[]";

fn kept(c: char, piece: Piece) -> bool {
    c.is_ascii_alphanumeric()
        || (c.is_ascii() && PUNCTUATION.contains(&(c as u8)))
        || (c == ' ' && piece == Piece::Text)
}

/// `value` as it may be written into a boot script or a kernel command line:
/// every character outside the safe alphabet replaced by [`REPLACEMENT`], text
/// cut at [`MAX_TEXT`] characters. A word that would still mean something to
/// Linux (`--`) is replaced whole.
pub fn safe(value: &str, piece: Piece) -> Cow<'_, str> {
    let limit = match piece {
        Piece::Text => MAX_TEXT,
        Piece::Word => MAX_WORD,
    };
    let clean = value.chars().count() <= limit && value.chars().all(|c| kept(c, piece));
    let out: Cow<str> = if clean {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(
            value
                .chars()
                .take(limit)
                .map(|c| if kept(c, piece) { c } else { REPLACEMENT })
                .collect(),
        )
    };
    if piece == Piece::Word && out == "--" {
        return Cow::Owned("??".into());
    }
    out
}

/// Whether `value` goes into a script unchanged as one argument: what an
/// inventory's values must be.
pub fn is_word(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_WORD && safe(value, Piece::Word) == value
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One line of an iPXE script as iPXE runs it: its commands, each a list
    /// of words, as `system()` in iPXE's `exec.c` splits them; `None` when a
    /// word would be expanded (`${`) or the line continues on the next (`\`).
    fn ipxe_commands(line: &str) -> Option<Vec<Vec<String>>> {
        if line.contains('\n') || line.contains('\r') || line.ends_with('\\') {
            return None;
        }
        let mut commands = vec![Vec::new()];
        for word in line.split(|c: char| c.is_ascii_whitespace()) {
            if word.is_empty() {
                continue;
            }
            if word.starts_with('#') {
                break;
            }
            if matches!(word, ";" | "||" | "&&") {
                commands.push(Vec::new());
                continue;
            }
            if word.contains("${") {
                return None;
            }
            commands.last_mut()?.push(word.to_string());
        }
        Some(commands)
    }

    /// A Linux command line's words as the kernel's `next_arg` takes them:
    /// `None` when a quote would join words or `--` would end the parameters.
    fn linux_words(line: &str) -> Option<Vec<&str>> {
        if line.contains('"') {
            return None;
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        (!words.contains(&"--")).then_some(words)
    }

    /// The attacks the hold message once let through, and iPXE's other syntax.
    #[test]
    fn what_ipxe_would_act_on_is_replaced() {
        for (evil, want) in [
            (
                "disk gone ; chain http://10.0.2.2/x.ipxe #",
                "disk gone ? chain http://10.0.2.2/x.ipxe ?",
            ),
            ("a || reboot", "a ?? reboot"),
            ("a && poweroff", "a ?? poweroff"),
            ("${net0/mac}", "??net0/mac?"),
            ("#comment", "?comment"),
            ("line\nshell", "line?shell"),
            ("ends in \\", "ends in ?"),
            ("\"quoted\" 'too'", "?quoted? ?too?"),
            ("tab\there", "tab?here"),
            ("\u{1b}[31mred", "?[31mred"),
            ("ünïcode", "?n?code"),
            ("{braces} <x> |pipe &amp $", "?braces? ?x? ?pipe ?amp ?"),
        ] {
            assert_eq!(safe(evil, Piece::Text), want, "{evil:?}");
            let line = format!("echo imprint: {}", safe(evil, Piece::Text));
            let commands = ipxe_commands(&line).unwrap();
            assert_eq!(commands.len(), 1, "{line}");
            assert_eq!(commands[0][0], "echo");
        }
        assert_eq!(safe("--", Piece::Word), "??");
        assert_eq!(safe("a b", Piece::Word), "a?b");
        assert_eq!(
            safe("console=ttyS0,115200n8", Piece::Word),
            "console=ttyS0,115200n8"
        );
        assert!(matches!(
            safe("http://10.0.2.2:8080/boot.ipxe", Piece::Word),
            Cow::Borrowed(_)
        ));
        assert_eq!(safe(&"x".repeat(1000), Piece::Text).len(), MAX_TEXT);
    }

    #[test]
    fn inventory_words() {
        for good in [
            "imprint.disk=/dev/vda",
            "console=ttyS0,115200",
            "panic=-1",
            "ip=10.0.0.5::10.0.0.1:255.255.255.0:node:eth0:none",
            "http://[fd00::1]:8080/x?y=1",
            "root=UUID=0a1b-2c3d",
        ] {
            assert!(is_word(good), "{good}");
        }
        for bad in [
            "", "--", "a b", "a;b", "#x", "${x}", "a|b", "x&&y", "q\"", "it's", "a\\", "x\n",
        ] {
            assert!(!is_word(bad), "{bad:?}");
        }
        assert!(!is_word(&"a".repeat(MAX_WORD + 1)));
    }

    proptest! {
        /// Whatever a machine reports, its message is one `echo` of plain
        /// words on one line.
        #[test]
        fn any_text_is_one_echo(text in any::<String>()) {
            let line = format!("echo imprint: held: {}", safe(&text, Piece::Text));
            let commands = ipxe_commands(&line);
            prop_assert!(commands.is_some(), "{line:?}");
            let commands = commands.unwrap();
            prop_assert_eq!(commands.len(), 1, "{:?}", line);
            prop_assert_eq!(&commands[0][0], "echo");
            prop_assert!(safe(&text, Piece::Text).chars().count() <= MAX_TEXT);
        }

        /// Text made of iPXE's own syntax, densely: still one `echo`.
        #[test]
        fn ipxe_syntax_is_one_echo(parts in proptest::collection::vec(
            prop_oneof![
                Just(";"), Just("||"), Just("&&"), Just("${"), Just("}"), Just("#"),
                Just("\n"), Just("\\"), Just("\""), Just("'"), Just(" "), Just("chain"),
                Just("http://x/y"), Just(":label"), Just("goto"), Just("-n"),
            ],
            0..40,
        )) {
            let text: String = parts.concat();
            let line = format!("echo imprint: {}", safe(&text, Piece::Text));
            let commands = ipxe_commands(&line).unwrap();
            prop_assert_eq!(commands.len(), 1);
        }

        /// Kernel arguments, whatever they were: each is one word to iPXE and
        /// to Linux, in the order given.
        #[test]
        fn any_words_stay_words(words in proptest::collection::vec(any::<String>(), 0..12)) {
            let safe_words: Vec<String> = words
                .iter()
                .map(|w| safe(w, Piece::Word).into_owned())
                .filter(|w| !w.is_empty())
                .collect();
            let args = safe_words.join(" ");
            let line = format!("kernel http://s/boot/vmlinuz initrd=initramfs.img {args}");
            let commands = ipxe_commands(&line).unwrap();
            prop_assert_eq!(commands.len(), 1);
            prop_assert_eq!(&commands[0][3..], &safe_words[..]);
            let linux = linux_words(&args);
            prop_assert!(linux.is_some(), "{args:?}");
            prop_assert_eq!(linux.unwrap().len(), safe_words.len());
            for w in &safe_words {
                prop_assert!(is_word(w), "{w:?}");
            }
        }
    }
}
