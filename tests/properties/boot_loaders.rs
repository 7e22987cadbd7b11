//! What the deploy environment reads to start an installed OS by kexec: PE
//! section tables (UKIs, systemd-boot), systemd-boot's entries and
//! `loader.conf`, and the root it names by partition type.

use super::*;
use imprint::format::gpt::{Layout, Partition};
use imprint::format::{dps, pe, sdboot};
use std::cmp::Ordering;

const UKI: &[u8] = include_bytes!("../fixtures/uki/uki.efi");

/// Text made of what entries and os-release files hold, and some noise.
fn text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "(title|version|sort-key|machine-id|linux|initrd|uki|efi|options|architecture|default) [ -~]{0,40}",
        "(ID|IMAGE_ID|NAME|PRETTY_NAME|VERSION|VERSION_ID|BUILD_ID)=[\"']?[ -~]{0,30}[\"']?",
        ".{0,60}",
    ];
    vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_pe_headers_never_panic_and_sections_stay_in_the_file(
        ms in mutations(),
        len in prop::option::of(0u64..1 << 20),
    ) {
        let head = mutate(&UKI[..4096.min(UKI.len())], &ms);
        let len = len.unwrap_or(UKI.len() as u64);
        if let Ok(sections) = pe::sections(&head, len) {
            for s in &sections {
                prop_assert!(s.offset.checked_add(s.size).is_some_and(|end| end <= len));
            }
            let _ = pe::Uki::from_sections(&sections);
        }
    }

    #[test]
    fn arbitrary_bytes_are_no_pe_section_table_to_follow(b in bytes(), len in any::<u64>()) {
        if let Ok(sections) = pe::sections(&b, len) {
            prop_assert!(sections.iter().all(|s| s.offset.saturating_add(s.size) <= len));
        }
        let _ = pe::cmdline_text(&b);
        let _ = pe::is_systemd_boot_magic(&b);
        let _ = sdboot::efi_string(&b);
    }

    #[test]
    fn entries_parse_to_safe_paths_or_nothing(name in "[ -~]{0,40}", t in text(), cmdline in prop::option::of(".{0,80}")) {
        for entry in [sdboot::type1(&name, 1, &t), sdboot::type2(&name, 1, &t, cmdline.as_deref())].into_iter().flatten() {
            let paths = match &entry.kind {
                sdboot::Kind::Linux { linux, initrds } => {
                    let mut p = initrds.clone();
                    p.push(linux.clone());
                    p
                }
                sdboot::Kind::Uki { path } | sdboot::Kind::Efi { path } => vec![path.clone()],
            };
            for p in paths {
                prop_assert!(p.starts_with('/') && !p.split('/').any(|s| s == ".."), "{}", p);
            }
            prop_assert!(entry.options.len() <= 2048);
        }
        let _ = sdboot::loader_conf_default(&t);
    }

    #[test]
    fn versions_compare_as_an_order(a in "[0-9a-z.~^-]{0,12}", b in "[0-9a-z.~^-]{0,12}", c in ".{0,12}") {
        prop_assert_eq!(sdboot::version_cmp(&a, &b), sdboot::version_cmp(&b, &a).reverse());
        prop_assert_eq!(sdboot::version_cmp(&a, &a), Ordering::Equal);
        let _ = sdboot::version_cmp(&a, &c);
    }

    #[test]
    fn the_root_named_for_a_kexec_is_one_of_the_disk(
        cmdline in "[ -~]{0,120}",
        parts in vec((any::<bool>(), guid(), any::<u64>(), ".{0,12}"), 0..6),
    ) {
        let partitions: Vec<Partition> = parts
            .iter()
            .enumerate()
            .map(|(i, (root, unique_guid, attributes, name))| Partition {
                number: i as u32 + 1,
                type_guid: if *root { dps::ROOT_X86_64 } else { dps::LINUX_DATA },
                unique_guid: *unique_guid,
                first_lba: 2048 * (i as u64 + 1),
                last_lba: 2048 * (i as u64 + 1) + 2047,
                attributes: *attributes,
                name: name.clone(),
            })
            .collect();
        let layout = Layout {
            sector_size: 512,
            disk_guid: imprint::format::gpt::Guid([1; 16]),
            first_usable_lba: 34,
            last_usable_lba: 1 << 30,
            partitions: partitions.clone(),
        };
        match dps::root_for_kexec(&cmdline, &layout) {
            dps::Root::Added { cmdline: line, partuuid } => {
                prop_assert!(partitions.iter().any(|p| p.unique_guid == partuuid && p.type_guid == dps::ROOT_X86_64));
                let named = format!("root=PARTUUID={}", partuuid.to_string().to_ascii_lowercase());
                prop_assert!(line.split_ascii_whitespace().any(|w| w == named), "{}", line);
            }
            dps::Root::Named => prop_assert!(cmdline.split_ascii_whitespace().any(|w| w.starts_with("root="))),
            dps::Root::Unknown(_) => {}
        }
    }
}
