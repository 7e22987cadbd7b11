//! The boot switch of a BIOS upgrade and its rollback, on disk images made with
//! sfdisk: what PID 1's `imprint.mode=rollback` and `imprint rollback` share.
//! The first disk in each list stands for the one the firmware boots.

mod common;

use imprint::bootswitch as upgrade;
use imprint::format::digest::Digest;
use imprint::format::gpt::Guid;
use imprint::format::mbr::{self, CHAIN_STUB};
use imprint::format::state::{Mode, PreviousOs, Record};
use imprint::statepart::{self, StateDisk};
use std::path::Path;

fn disk(dir: &Path, name: &str) -> StateDisk {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    common::sfdisk(
        &path,
        &format!(
            "label: gpt\nsize=4MiB, type=L, name=root\nsize=4MiB, type={}, name=imprint-state\n",
            imprint::statepart::TYPE_GUID
        ),
    );
    // Some boot code, as a boot loader would have left; each disk's its own.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..440].fill(name.as_bytes()[0]);
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
    upgrade::bios_switch(&disks, &old, new.layout.disk_guid).unwrap();
    let after = std::fs::read(&old.device).unwrap();
    assert_eq!(
        &after[..imprint::format::mbr::CHAIN_STUB.len()],
        &imprint::format::mbr::CHAIN_STUB
    );
    assert_eq!(&after[424..440], &new.layout.disk_guid.0);
    assert_eq!(&after[440..512], &before[440..512]);
    // The stub's fallback: the disk's own first sector, in its rescue area.
    let rescue = old.rescue_offset();
    assert_eq!(
        &after[rescue as usize..rescue as usize + 512],
        &before[..512]
    );
    assert_eq!(
        &after[mbr::RESCUE_LBA_OFFSET..mbr::RESCUE_LBA_OFFSET + 8],
        &(rescue / 512).to_le_bytes()
    );
    assert_eq!(
        old.read_record().unwrap().0.saved_boot_record.as_deref(),
        Some(&before[..512])
    );
    // Switching again keeps the original, not the stub.
    upgrade::bios_switch(&disks, &old, new.layout.disk_guid).unwrap();
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

/// A disk's boot target as the firmware would follow it from the front disk.
fn boots(disks: &[StateDisk]) -> Guid {
    let front = &disks[0];
    let sector: [u8; 512] = std::fs::read(&front.device).unwrap()[..512]
        .try_into()
        .unwrap();
    mbr::chain_target(&sector).unwrap_or(front.layout.disk_guid)
}

fn previous_of(d: &StateDisk) -> Option<PreviousOs> {
    Some(PreviousOs {
        disk_guid: d.layout.disk_guid,
        partition_guids: vec![],
    })
}

/// The upgrade from `from` to `to` as PID 1 leaves it: `to`'s record says
/// upgrade, and the firmware's path leads to it.
fn upgrade_to(disks: &[StateDisk], from: &StateDisk, to: &StateDisk) {
    to.write_record(&record(Mode::Upgrade, previous_of(from)))
        .unwrap();
    upgrade::bios_switch(disks, from, to.layout.disk_guid).unwrap();
    assert_eq!(boots(disks), to.layout.disk_guid);
}

fn commit(d: &StateDisk) {
    let (mut r, _) = d.read_record().unwrap();
    d.commit(&mut r).unwrap();
}

/// A deploy over `d`: a fresh GPT disk GUID and its own boot code again.
fn redeploy(dir: &Path, d: &StateDisk) -> StateDisk {
    let name = Path::new(&d.device).file_name().unwrap().to_str().unwrap();
    let fresh = disk(dir, name);
    assert_ne!(fresh.layout.disk_guid, d.layout.disk_guid);
    fresh
}

#[test]
fn rolling_back_a_second_upgrade_keeps_the_committed_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        disk(dir.path(), "a.img"),
        disk(dir.path(), "b.img"),
        disk(dir.path(), "c.img"),
    );
    a.write_record(&record(Mode::Committed, None)).unwrap();
    let disks = vec![a.clone(), b.clone(), c.clone()];
    upgrade_to(&disks, &a, &b);
    commit(&b);
    let b_sector = std::fs::read(&b.device).unwrap()[..512].to_vec();
    upgrade_to(&disks, &b, &c);
    // One stub, on the front disk; B keeps its own boot code.
    assert_eq!(&std::fs::read(&b.device).unwrap()[..512], &b_sector[..]);

    let done = upgrade::rollback(&disks).unwrap();
    assert_eq!(boots(&disks), b.layout.disk_guid, "{done:?}");
    assert_eq!(c.read_record().unwrap().0.mode, Mode::RolledBack);
    assert_eq!(b.read_record().unwrap().0.mode, Mode::Committed);
    // Nothing further to undo: B's upgrade committed.
    assert!(upgrade::rollback(&disks).is_err());
    assert_eq!(boots(&disks), b.layout.disk_guid);
}

#[test]
fn a_redeployed_disk_stays_the_one_the_stub_boots() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (disk(dir.path(), "a.img"), disk(dir.path(), "b.img"));
    a.write_record(&record(Mode::Committed, None)).unwrap();
    upgrade_to(&[a.clone(), b.clone()], &a, &b);
    commit(&b);

    let b2 = redeploy(dir.path(), &b);
    b2.write_record(&record(Mode::Deploy, None)).unwrap();
    let disks = vec![a.clone(), b2.clone()];
    let done = upgrade::bios_rechain(&disks, b.layout.disk_guid, b2.layout.disk_guid)
        .unwrap()
        .expect("the stub is re-aimed");
    assert_eq!(boots(&disks), b2.layout.disk_guid, "{done}");
    // A's own boot record is still the one saved.
    let saved = a.read_record().unwrap().0.saved_boot_record.unwrap();
    assert_eq!(saved[0], b'a');
    // A disk no stub boots changes nothing.
    assert_eq!(
        upgrade::bios_rechain(&disks, Guid([9; 16]), Guid([8; 16])).unwrap(),
        None
    );
}

#[test]
fn repeated_upgrades_roll_back_one_step_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let a = disk(dir.path(), "a.img");
    let b = disk(dir.path(), "b.img");
    a.write_record(&record(Mode::Committed, None)).unwrap();

    // A -> B, committed.
    upgrade_to(&[a.clone(), b.clone()], &a, &b);
    commit(&b);
    // B -> A: the front disk is deployed again and boots its own new OS.
    let a2 = redeploy(dir.path(), &a);
    let disks = vec![a2.clone(), b.clone()];
    upgrade_to(&disks, &b, &a2);
    assert!(
        !std::fs::read(&a2.device).unwrap().starts_with(&CHAIN_STUB),
        "nothing to switch when the new OS is on the front disk"
    );
    // Rolled back: the front disk boots B again, and only that.
    upgrade::rollback(&disks).unwrap();
    assert_eq!(boots(&disks), b.layout.disk_guid);
    assert_eq!(a2.read_record().unwrap().0.mode, Mode::RolledBack);
    assert_eq!(b.read_record().unwrap().0.mode, Mode::Committed);

    // B -> A again, committed this time; then A -> B, rolled back to A.
    let a3 = redeploy(dir.path(), &a2);
    let disks = vec![a3.clone(), b.clone()];
    upgrade_to(&disks, &b, &a3);
    commit(&a3);
    let b2 = redeploy(dir.path(), &b);
    let disks = vec![a3.clone(), b2.clone()];
    upgrade_to(&disks, &a3, &b2);
    upgrade::rollback(&disks).unwrap();
    assert_eq!(boots(&disks), a3.layout.disk_guid);
    assert_eq!(
        std::fs::read(&a3.device).unwrap()[0],
        b'a',
        "A boots its own boot code again"
    );
    assert_eq!(a3.read_record().unwrap().0.saved_boot_record, None);
}
