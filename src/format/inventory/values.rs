//! The two values an inventory spells its own way: a machine's MAC address and
//! how iPXE hands a machine to its own disk.

use std::fmt;
use std::str::FromStr;

/// An Ethernet address; shown as iPXE's `${net0/mac}` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    /// `52:54:00:12:34:56`, `52-54-00-12-34-56` or `525400123456`, either case.
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("{:?} is not a MAC address (like 52:54:00:12:34:56)", s);
        let hex: String = if s.len() == 17 {
            let sep = s.as_bytes()[2];
            if !(sep == b':' || sep == b'-') || s.bytes().skip(2).step_by(3).any(|b| b != sep) {
                return Err(bad());
            }
            s.split(sep as char).collect()
        } else {
            s.to_string()
        };
        if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// How iPXE hands a machine that is not to deploy to its own disk. Which works
/// depends on the firmware: `exit` returns to it (UEFI then tries the next boot
/// entry; many BIOSes do too, some stop), `sanboot` boots a BIOS drive directly,
/// `chain` loads a loader from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalBoot {
    Exit,
    /// A BIOS drive number (0x80 is the first disk).
    Sanboot(u8),
    Chain(String),
}

impl FromStr for LocalBoot {
    type Err = String;
    fn from_str(s: &str) -> Result<LocalBoot, String> {
        if s == "exit" {
            return Ok(LocalBoot::Exit);
        }
        if s == "sanboot" {
            return Ok(LocalBoot::Sanboot(0x80));
        }
        if let Some(drive) = s.strip_prefix("sanboot:") {
            let n = drive
                .strip_prefix("0x")
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|n| *n >= 0x80)
                .ok_or_else(|| format!("{drive:?} is not a BIOS disk number (0x80 to 0xff)"))?;
            return Ok(LocalBoot::Sanboot(n));
        }
        if let Some(url) = s.strip_prefix("chain:") {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && crate::format::ipxe::is_word(url);
            return if ok {
                Ok(LocalBoot::Chain(url.to_string()))
            } else {
                Err(format!(
                    "{url:?} is not an http:// or https:// URL iPXE can load (letters, digits and - . _ ~ : / ? = + , @ % * ( ) [ ] only)"
                ))
            };
        }
        Err(format!(
            "{s:?} is not one of exit, sanboot, sanboot:0xNN, chain:URL"
        ))
    }
}

impl fmt::Display for LocalBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalBoot::Exit => write!(f, "exit"),
            LocalBoot::Sanboot(0x80) => write!(f, "sanboot"),
            LocalBoot::Sanboot(n) => write!(f, "sanboot:{n:#04x}"),
            LocalBoot::Chain(url) => write!(f, "chain:{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_in_every_spelling_and_nothing_else() {
        let want = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        for s in [
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "525400123456",
            "52:54:00:12:34:56".to_uppercase().as_str(),
        ] {
            assert_eq!(s.parse::<Mac>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:12:34:56");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54-00:12:34:56",
            "52:54:00:12:34:5g",
            "5254001234567",
            "52:54:00:12:34:56:78",
            "+2:54:00:12:34:56",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn local_boot_methods_read_and_print_back() {
        for s in [
            "exit",
            "sanboot",
            "sanboot:0x81",
            "chain:http://boot/grub.efi",
        ] {
            assert_eq!(s.parse::<LocalBoot>().unwrap().to_string(), s);
        }
        for bad in [
            "reboot",
            "sanboot:0x7f",
            "sanboot:80",
            "chain:ftp://x",
            "chain:http://a b",
            "chain:http://${x}",
        ] {
            assert!(bad.parse::<LocalBoot>().is_err(), "{bad}");
        }
    }
}
