//! The boot switch of a BIOS upgrade and its rollback, on disk images made with
//! sfdisk: what PID 1's `imprint.mode=rollback` and `imprint rollback` share.

use imprint::bootswitch as upgrade;
use imprint::format::digest::Digest;
use imprint::format::state::{Mode, PreviousOs, Record};
use imprint::statepart::{self, StateDisk};
use std::path::Path;
use std::process::Command;

fn disk(dir: &Path, name: &str) -> StateDisk {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .args(["-q", path.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "label: gpt\nsize=4MiB, type=L, name=root\nsize=4MiB, type={}, name=imprint-state\n",
                imprint::statepart::TYPE_GUID
            )
            .as_bytes(),
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    // Some boot code, as a boot loader would have left.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..440].fill(0xB8);
    std::fs::write(&path, bytes).unwrap();
    StateDisk::open(path.to_str().unwrap()).expect("a state partition")
}

fn record(mode: Mode, previous: Option<PreviousOs>) -> Record {
    Record {
        previous,
        ..Record::new(mode, "os", Digest::of(b"x"))
    }
}

#[test]
fn bios_switch_and_rollback_on_disk_images() {
    let dir = tempfile::tempdir().unwrap();
    let old = disk(dir.path(), "old.img");
    let new = disk(dir.path(), "new.img");
    old.write_record(&record(Mode::Committed, None)).unwrap();
    new.write_record(&record(
        Mode::Upgrade,
        Some(PreviousOs {
            disk_guid: old.layout.disk_guid,
            partition_guids: old
                .layout
                .partitions
                .iter()
                .map(|p| p.unique_guid)
                .collect(),
        }),
    ))
    .unwrap();
    let disks = vec![
        StateDisk::open(&old.device).unwrap(),
        StateDisk::open(&new.device).unwrap(),
    ];

    // The previous OS is the committed disk that is not the new one.
    assert_eq!(
        statepart::find_previous(&disks, None, &new.device)
            .unwrap()
            .device,
        old.device
    );
    let same = statepart::find_previous(&disks, Some(&new.device), &new.device).unwrap_err();
    assert!(
        same.to_string().contains("the disk being upgraded"),
        "{same}"
    );
    assert!(statepart::find_previous(&disks, None, &old.device).is_err());

    let before = std::fs::read(&old.device).unwrap();
    upgrade::bios_pass_over(&old, new.layout.disk_guid).unwrap();
    let after = std::fs::read(&old.device).unwrap();
    assert_eq!(
        &after[..imprint::format::mbr::CHAIN_STUB.len()],
        &imprint::format::mbr::CHAIN_STUB
    );
    assert_eq!(&after[424..440], &new.layout.disk_guid.0);
    assert_eq!(&after[440..512], &before[440..512]);
    assert_eq!(
        old.read_record().unwrap().0.saved_boot_record.as_deref(),
        Some(&before[..512])
    );
    // Switching again keeps the original, not the stub.
    upgrade::bios_pass_over(&old, new.layout.disk_guid).unwrap();
    assert_eq!(
        old.read_record().unwrap().0.saved_boot_record.as_deref(),
        Some(&before[..512])
    );
    // Everything but the first sector and the state partition is as it was.
    let state = &old.layout.partitions[old.state_index];
    let (s, e) = (
        (state.first_lba * 512) as usize,
        ((state.last_lba + 1) * 512) as usize,
    );
    assert_eq!(&after[512..s], &before[512..s]);
    assert_eq!(&after[e..], &before[e..]);

    let abandoned = statepart::abandoned_upgrades(&disks, &disks[0]);
    assert_eq!(abandoned.len(), 1);
    assert_eq!(abandoned[0].device, new.device);

    let done = upgrade::rollback(&disks).unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(&std::fs::read(&old.device).unwrap()[..512], &before[..512]);
    assert_eq!(new.read_record().unwrap().0.mode, Mode::RolledBack);
    assert_eq!(old.read_record().unwrap().0.saved_boot_record, None);
    let again = upgrade::rollback(&disks).unwrap_err();
    assert!(
        again.to_string().contains("nothing to roll back"),
        "{again}"
    );
}
