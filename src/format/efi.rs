//! UEFI boot variables: `Boot####` load options with a short-form hard-drive
//! device path (`HD(...)/File(...)`), and the `BootOrder`/`BootNext` lists. Built and
//! parsed as bytes; `sys` reads and writes them through efivarfs.

use super::gpt::{Guid, Partition};

/// The EFI global variable vendor GUID, as efivarfs names files.
pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS
pub const ATTRIBUTES: u32 = 0x7;
const LOAD_OPTION_ACTIVE: u32 = 0x1;
/// The removable-media loader path every UEFI firmware looks for.
pub const DEFAULT_LOADER: &str = "\\EFI\\BOOT\\BOOTX64.EFI";

fn ucs2(text: &str) -> Vec<u8> {
    let mut out: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    out.extend_from_slice(&[0, 0]);
    out
}

/// A load option booting `loader` from the GPT partition `part`. LBAs are in the
/// disk's own logical blocks, as in the GPT.
pub fn load_option(description: &str, part: &Partition, loader: &str) -> Vec<u8> {
    let mut path = Vec::new();
    // Hard drive media path: type 4, subtype 1, 42 bytes.
    path.extend_from_slice(&[0x04, 0x01, 42, 0]);
    path.extend_from_slice(&part.number.to_le_bytes());
    path.extend_from_slice(&part.first_lba.to_le_bytes());
    path.extend_from_slice(&(part.last_lba - part.first_lba + 1).to_le_bytes());
    path.extend_from_slice(&part.unique_guid.0);
    path.push(0x02); // GPT
    path.push(0x02); // signature is a GUID
    // File path: type 4, subtype 4.
    let file = ucs2(loader);
    path.extend_from_slice(&[0x04, 0x04]);
    path.extend_from_slice(&((4 + file.len()) as u16).to_le_bytes());
    path.extend_from_slice(&file);
    // End of the device path.
    path.extend_from_slice(&[0x7F, 0xFF, 0x04, 0x00]);

    let mut out = Vec::new();
    out.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(&ucs2(description));
    out.extend_from_slice(&path);
    out
}

/// The device path nodes of a load option: (type, subtype, whole node), up to
/// the end node; `None` when the option is malformed.
fn path_nodes(option: &[u8]) -> Option<Vec<(u8, u8, &[u8])>> {
    let path_len = u16::from_le_bytes([*option.get(4)?, *option.get(5)?]) as usize;
    // Skip the NUL-terminated UCS-2 description.
    let mut at = 6;
    loop {
        let unit = option.get(at..at + 2)?;
        at += 2;
        if unit == [0, 0] {
            break;
        }
    }
    let path = option.get(at..at + path_len)?;
    let mut nodes = Vec::new();
    let mut node = 0;
    while node + 4 <= path.len() {
        let (kind, sub) = (path[node], path[node + 1]);
        let len = u16::from_le_bytes([path[node + 2], path[node + 3]]) as usize;
        if len < 4 {
            return None;
        }
        if kind == 0x7F {
            break;
        }
        nodes.push((kind, sub, path.get(node..node + len)?));
        node += len;
    }
    Some(nodes)
}

/// The partition GUID a load option's hard-drive node names, if it has one.
pub fn option_partition(option: &[u8]) -> Option<Guid> {
    path_nodes(option)?
        .into_iter()
        .find(|(kind, sub, n)| *kind == 0x04 && *sub == 0x01 && n.len() >= 42)
        .and_then(|(_, _, n)| Some(Guid(n.get(24..40)?.try_into().ok()?)))
}

/// Whether a load option boots from the network: its device path goes
/// through a NIC (a MAC address node), as PXE, HTTP boot and iPXE's own do.
pub fn option_is_network(option: &[u8]) -> bool {
    path_nodes(option).is_some_and(|nodes| {
        nodes
            .iter()
            .any(|(kind, sub, _)| *kind == 0x03 && *sub == 0x0B)
    })
}

/// `order` with `entry` moved (or added) ahead of every entry but the network
/// ones that lead it: the first disk to boot, with a network-first order kept.
pub fn first_after_network(
    order: &[u16],
    entry: u16,
    is_network: impl Fn(u16) -> bool,
) -> Vec<u16> {
    let rest: Vec<u16> = order.iter().copied().filter(|&n| n != entry).collect();
    let at = rest
        .iter()
        .position(|&n| !is_network(n))
        .unwrap_or(rest.len());
    let mut out = rest[..at].to_vec();
    out.push(entry);
    out.extend_from_slice(&rest[at..]);
    out
}

/// `order` with `entry` moved (or added) right after `after`, or at the end
/// when `after` is not in it.
pub fn right_after(order: &[u16], entry: u16, after: u16) -> Vec<u16> {
    let mut out: Vec<u16> = order.iter().copied().filter(|&n| n != entry).collect();
    let at = out
        .iter()
        .position(|&n| n == after)
        .map_or(out.len(), |i| i + 1);
    out.insert(at, entry);
    out
}

/// `BootOrder` contents: little-endian u16 entry numbers.
pub fn parse_order(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub fn encode_order(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// `order` with `first` moved (or added) to the front.
pub fn promote(order: &[u16], first: u16) -> Vec<u16> {
    std::iter::once(first)
        .chain(order.iter().copied().filter(|&n| n != first))
        .collect()
}

/// The efivarfs file name of `Boot####`.
pub fn boot_var(number: u16) -> String {
    format!("Boot{number:04X}-{GLOBAL_GUID}")
}

/// The lowest entry number not in `used`.
pub fn free_number(used: &[u16]) -> Option<u16> {
    (0..=0xFFFFu16).find(|n| !used.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_entries_stay_ahead_of_the_disk_put_first() {
        let net = |n: u16| n == 1 || n == 2;
        assert_eq!(first_after_network(&[1, 2, 3, 4], 7, net), [1, 2, 7, 3, 4]);
        assert_eq!(first_after_network(&[1, 2, 3, 7], 7, net), [1, 2, 7, 3]);
        assert_eq!(first_after_network(&[3, 1, 7], 7, net), [7, 3, 1]);
        assert_eq!(first_after_network(&[1, 2], 7, net), [1, 2, 7]);
        assert_eq!(first_after_network(&[], 7, net), [7]);
        assert_eq!(right_after(&[1, 2, 3, 4], 7, 1), [1, 7, 2, 3, 4]);
        assert_eq!(right_after(&[1, 7, 2], 7, 2), [1, 2, 7]);
        assert_eq!(right_after(&[1, 2], 7, 9), [1, 2, 7]);
    }

    #[test]
    fn network_load_options_are_told_from_disk_ones() {
        // PciRoot(0)/Pci(2,0)/MAC(525400123456)/IPv4(...): a PXE entry.
        let mut path = vec![0x02, 0x01, 12, 0, 0xD0, 0x41, 0x03, 0x0A, 0, 0, 0, 0];
        path.extend_from_slice(&[0x01, 0x01, 6, 0, 0, 2]);
        let mut mac = vec![0x03, 0x0B, 37, 0];
        mac.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        mac.resize(36, 0);
        mac.push(1);
        path.extend_from_slice(&mac);
        path.extend_from_slice(&[0x7F, 0xFF, 4, 0]);
        let mut option = vec![1, 0, 0, 0];
        option.extend_from_slice(&(path.len() as u16).to_le_bytes());
        option.extend_from_slice(&ucs2("UEFI PXEv4"));
        option.extend_from_slice(&path);
        assert!(option_is_network(&option));
        assert_eq!(option_partition(&option), None);
        let part = Partition {
            number: 1,
            type_guid: crate::format::gpt::ESP_TYPE,
            unique_guid: Guid([7; 16]),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 0,
            name: "ESP".into(),
        };
        let disk = load_option("imprint", &part, DEFAULT_LOADER);
        assert!(!option_is_network(&disk));
        assert_eq!(option_partition(&disk), Some(Guid([7; 16])));
        assert!(!option_is_network(&[1, 2, 3]));
    }

    fn esp() -> Partition {
        Partition {
            number: 1,
            type_guid: super::super::gpt::ESP_TYPE,
            unique_guid: Guid([0xAB; 16]),
            first_lba: 2048,
            last_lba: 165_887,
            attributes: 0,
            name: "ESP".into(),
        }
    }

    #[test]
    fn load_option_layout() {
        let opt = load_option("imprint", &esp(), DEFAULT_LOADER);
        assert_eq!(&opt[..4], &1u32.to_le_bytes());
        let desc_len = ("imprint".len() + 1) * 2;
        let path = &opt[6 + desc_len..];
        assert_eq!(u16::from_le_bytes([opt[4], opt[5]]) as usize, path.len());
        assert_eq!(&path[..4], &[4, 1, 42, 0]);
        assert_eq!(&path[4..8], &1u32.to_le_bytes());
        assert_eq!(&path[8..16], &2048u64.to_le_bytes());
        assert_eq!(&path[16..24], &163_840u64.to_le_bytes());
        assert_eq!(&path[24..40], &[0xAB; 16]);
        assert_eq!(&path[40..42], &[2, 2]);
        assert_eq!(&path[42..44], &[4, 4]);
        assert_eq!(&path[path.len() - 4..], &[0x7F, 0xFF, 4, 0]);
        assert_eq!(option_partition(&opt), Some(Guid([0xAB; 16])));
        assert_eq!(option_partition(&opt[..20]), None);
    }

    #[test]
    fn orders() {
        let order = parse_order(&[1, 0, 3, 0, 0, 0]);
        assert_eq!(order, [1, 3, 0]);
        assert_eq!(promote(&order, 3), [3, 1, 0]);
        assert_eq!(promote(&order, 7), [7, 1, 3, 0]);
        assert_eq!(encode_order(&[3, 1]), [3, 0, 1, 0]);
        assert_eq!(free_number(&[0, 1, 3]), Some(2));
        assert_eq!(boot_var(0x1A), format!("Boot001A-{GLOBAL_GUID}"));
    }
}
