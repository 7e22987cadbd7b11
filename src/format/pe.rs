//! PE/COFF section tables, as far as boot loaders read them: a unified kernel
//! image (UKI: systemd's EFI stub with the kernel, initrd, command line and
//! os-release as sections) is started by the deploy environment from its
//! sections, and systemd-boot is recognised by its `.sdmagic` section. The file
//! comes from a disk: every offset and size is checked against the file's
//! length and bounded before anything is read.

use std::io::{self, Read, Seek, SeekFrom};

/// Bytes of a file that hold its headers and section table (the DOS header's
/// pointer to the PE header must fall inside them).
pub const HEADER_BYTES: usize = 64 << 10;
/// Most sections taken from one table (the COFF limit is 96 for images).
const MAX_SECTIONS: usize = 96;

#[derive(Debug, thiserror::Error)]
pub enum PeError {
    #[error("reading it: {0}")]
    Io(#[from] io::Error),
    #[error("not a PE/COFF file ({0})")]
    NotPe(&'static str),
    #[error("section {name} lies outside the file ({offset}+{size} of {len} bytes)")]
    OutOfFile {
        name: String,
        offset: u64,
        size: u64,
        len: u64,
    },
    #[error("section {name} is {size} bytes, more than the {max} taken")]
    TooLarge { name: String, size: u64, max: u64 },
}

/// One section: where its data is in the file and how many bytes it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The section table of a PE file whose first bytes are `head` (at most
/// [`HEADER_BYTES`] are needed) and whose length is `len`. A section's size is
/// its virtual size (what the loader maps; objcopy pads the raw data to the
/// file alignment), never more than the raw data the file holds for it.
pub fn sections(head: &[u8], len: u64) -> Result<Vec<Section>, PeError> {
    if head.get(0..2) != Some(b"MZ") {
        return Err(PeError::NotPe("no MZ header"));
    }
    let pe = u32_at(head, 0x3c).ok_or(PeError::NotPe("truncated DOS header"))? as usize;
    if head.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::NotPe(
            "no PE signature where the DOS header points",
        ));
    }
    let coff = pe + 4;
    let count = u16_at(head, coff + 2).ok_or(PeError::NotPe("truncated COFF header"))? as usize;
    let optional = u16_at(head, coff + 16).ok_or(PeError::NotPe("truncated COFF header"))? as usize;
    if count > MAX_SECTIONS {
        return Err(PeError::NotPe("more sections than an image may have"));
    }
    let table = coff + 20 + optional;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = table + i * 40;
        let entry = head
            .get(at..at + 40)
            .ok_or(PeError::NotPe("section table past the headers read"))?;
        let raw_name = &entry[0..8];
        let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
        let name = String::from_utf8_lossy(&raw_name[..name_len]).into_owned();
        let virtual_size = u64::from(u32_at(entry, 8).unwrap_or(0));
        let raw_size = u64::from(u32_at(entry, 16).unwrap_or(0));
        let offset = u64::from(u32_at(entry, 20).unwrap_or(0));
        let size = if virtual_size == 0 {
            raw_size
        } else {
            virtual_size.min(raw_size)
        };
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(PeError::OutOfFile {
                name,
                offset,
                size,
                len,
            });
        }
        out.push(Section { name, offset, size });
    }
    Ok(out)
}

/// The section table of the PE file `file`.
pub fn read_sections<F: Read + Seek>(file: &mut F) -> Result<Vec<Section>, PeError> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(HEADER_BYTES.min(len as usize));
    file.by_ref()
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut head)?;
    sections(&head, len)
}

/// The bytes of `section` of `file`, refused when larger than `max`.
pub fn read_section<F: Read + Seek>(
    file: &mut F,
    section: &Section,
    max: u64,
) -> Result<Vec<u8>, PeError> {
    if section.size > max {
        return Err(PeError::TooLarge {
            name: section.name.clone(),
            size: section.size,
            max,
        });
    }
    file.seek(SeekFrom::Start(section.offset))?;
    let mut data = vec![0; section.size as usize];
    file.read_exact(&mut data)?;
    Ok(data)
}

/// The sections of a unified kernel image the deploy environment starts it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uki {
    pub linux: Section,
    /// Microcode first, then the initrd, as the stub hands them to the kernel.
    pub initrds: Vec<Section>,
    pub cmdline: Option<Section>,
    pub osrel: Option<Section>,
}

impl Uki {
    /// The UKI in a section table: `None` unless it has a `.linux` section.
    pub fn from_sections(sections: &[Section]) -> Option<Uki> {
        let find = |name: &str| sections.iter().find(|s| s.name == name).cloned();
        Some(Uki {
            linux: find(".linux")?,
            initrds: [".ucode", ".initrd"]
                .iter()
                .filter_map(|n| find(n))
                .filter(|s| s.size > 0)
                .collect(),
            cmdline: find(".cmdline"),
            osrel: find(".osrel"),
        })
    }
}

/// A `.cmdline` section as the command line it carries: up to the first NUL,
/// without the trailing newline and blanks the stub drops; `None` when it is
/// not printable text.
pub fn cmdline_text(data: &[u8]) -> Option<String> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let text = std::str::from_utf8(&data[..end]).ok()?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    text.chars()
        .all(|c| c.is_ascii_graphic() || c == ' ')
        .then(|| text.to_string())
}

/// Whether a `.sdmagic` section is systemd-boot's (not a stub's, which says
/// `systemd-stub`).
pub fn is_systemd_boot_magic(data: &[u8]) -> bool {
    data.starts_with(b"#### LoaderInfo: systemd-boot ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A UKI objcopy made from systemd's stub (tests/fixtures/uki/README.md).
    const UKI: &[u8] = include_bytes!("../../tests/fixtures/uki/uki.efi");
    /// systemd-boot as Debian ships it.
    const SDBOOT: &[u8] = include_bytes!("../../tests/fixtures/uki/systemd-bootx64.efi");

    #[test]
    fn a_uki_made_by_objcopy_gives_its_sections() {
        let mut f = Cursor::new(UKI);
        let sections = read_sections(&mut f).unwrap();
        let uki = Uki::from_sections(&sections).unwrap();
        let linux = read_section(&mut f, &uki.linux, 1 << 20).unwrap();
        assert_eq!(linux, b"not a kernel, only its place\n");
        let initrds: Vec<Vec<u8>> = uki
            .initrds
            .iter()
            .map(|s| read_section(&mut f, s, 1 << 20).unwrap())
            .collect();
        assert_eq!(initrds, [b"initrd bytes\n".to_vec()]);
        let cmdline = read_section(&mut f, uki.cmdline.as_ref().unwrap(), 4096).unwrap();
        assert_eq!(
            cmdline_text(&cmdline).unwrap(),
            "console=ttyS0 rw quiet testos.poweroff=1"
        );
        let osrel = read_section(&mut f, uki.osrel.as_ref().unwrap(), 4096).unwrap();
        assert!(String::from_utf8_lossy(&osrel).contains("VERSION_ID=\"12\""));
        // The stub's own code is there too, and the stub is not systemd-boot.
        assert!(sections.iter().any(|s| s.name == ".text"));
        let magic = sections.iter().find(|s| s.name == ".sdmagic").unwrap();
        let magic = read_section(&mut f, magic, 4096).unwrap();
        assert!(!is_systemd_boot_magic(&magic));
        assert!(read_section(&mut f, &uki.linux, 4).is_err(), "bounded");
    }

    #[test]
    fn systemd_boot_is_known_by_its_magic() {
        let mut f = Cursor::new(SDBOOT);
        let sections = read_sections(&mut f).unwrap();
        assert!(Uki::from_sections(&sections).is_none());
        let magic = sections.iter().find(|s| s.name == ".sdmagic").unwrap();
        let magic = read_section(&mut f, magic, 4096).unwrap();
        assert!(is_systemd_boot_magic(&magic), "{magic:?}");
    }

    #[test]
    fn hostile_tables_are_refused_not_followed() {
        assert!(matches!(sections(b"", 0), Err(PeError::NotPe(_))));
        assert!(matches!(sections(b"MZ", 2), Err(PeError::NotPe(_))));
        let mut head = UKI[..HEADER_BYTES.min(UKI.len())].to_vec();
        // The DOS header pointing past what was read.
        let mut far = head.clone();
        far[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            sections(&far, UKI.len() as u64),
            Err(PeError::NotPe(_))
        ));
        // A file shorter than its sections claim.
        assert!(matches!(
            sections(&head, 4096),
            Err(PeError::OutOfFile { .. })
        ));
        // A section count no image has.
        let pe = u32::from_le_bytes(head[0x3c..0x40].try_into().unwrap()) as usize;
        head[pe + 6..pe + 8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            sections(&head, UKI.len() as u64),
            Err(PeError::NotPe(_))
        ));
    }

    #[test]
    fn command_lines_are_text_up_to_the_first_nul() {
        assert_eq!(cmdline_text(b"a b\n\0junk").unwrap(), "a b");
        assert_eq!(cmdline_text(b"  x=1 \r\n").unwrap(), "x=1");
        assert!(cmdline_text(b"a\x1bb").is_none());
        assert!(cmdline_text(&[0xff, 0xfe]).is_none());
    }
}
