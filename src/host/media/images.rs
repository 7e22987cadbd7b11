//! The medium's boot loaders and file systems, made by Debian's tools: the
//! SYSLINUX and GRUB configurations, GRUB's EFI image, the FAT file system, and
//! the raw stick image (GPT, one FAT32 partition) or the hybrid ISO 9660 image.

use super::{Entry, MediaError, Options, io_err, place, run, write};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's packages put what a medium needs, and which package brings it.
pub(super) const GPTMBR: (&str, &str) = ("/usr/lib/syslinux/mbr/gptmbr.bin", "syslinux-common");
pub(super) const SYSLINUX_MODULES: &str = "/usr/lib/syslinux/modules/bios";
pub(super) const ISOLINUX_BIN: (&str, &str) = ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux");
pub(super) const ISOHDPFX: (&str, &str) = ("/usr/lib/ISOLINUX/isohdpfx.bin", "isolinux");
pub(super) const GRUB_EFI_MODULES: (&str, &str) =
    ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin");
/// SYSLINUX's core module, then the modules its menu needs.
pub(super) const MENU_MODULES: &[&str] = &["ldlinux.c32", "menu.c32", "libutil.c32"];
/// GRUB modules built into its EFI image.
pub(super) const GRUB_MODULES: &str = "part_gpt part_msdos fat iso9660 search search_fs_file normal configfile linux echo test serial terminal terminfo gzio all_video";

pub(super) fn syslinux_cfg(entries: &[Entry], timeout: u32) -> String {
    let mut cfg = String::from("SERIAL 0 115200\n");
    if entries.len() > 1 {
        cfg.push_str(&format!(
            "UI menu.c32\nMENU TITLE imprint\nTIMEOUT {}\n",
            timeout.max(1) * 10
        ));
    } else {
        cfg.push_str("PROMPT 0\nTIMEOUT 0\n");
    }
    cfg.push_str("DEFAULT entry0\n");
    for (i, e) in entries.iter().enumerate() {
        cfg.push_str(&format!(
            "LABEL entry{i}\n  MENU LABEL {}\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initramfs.img\n  APPEND {}\n",
            e.title, e.args
        ));
    }
    cfg
}

pub(super) fn grub_cfg(entries: &[Entry], timeout: u32) -> String {
    let mut cfg = String::from(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nset default=0\n",
    );
    cfg.push_str(&format!(
        "set timeout={}\n",
        if entries.len() > 1 { timeout } else { 0 }
    ));
    for e in entries {
        cfg.push_str(&format!(
            "menuentry '{}' {{\n  linux /boot/vmlinuz {}\n  initrd /boot/initramfs.img\n}}\n",
            e.title, e.args
        ));
    }
    cfg
}

/// What a medium's image is made from: the staged tree, its boot entries and
/// GRUB's EFI image, built in `stage` and written to `out`.
#[derive(Clone, Copy)]
pub(super) struct Parts<'a> {
    pub(super) opts: &'a Options,
    pub(super) stage: &'a Path,
    pub(super) tree: &'a Path,
    pub(super) entries: &'a [Entry],
    pub(super) grub_efi: &'a Path,
    pub(super) out: &'a Path,
}

/// GRUB's EFI image, with a built-in configuration that finds the medium and
/// reads its `boot/grub/grub.cfg`.
pub(super) fn build_grub_efi(stage: &Path, out: &Path, marker: &str) -> Result<(), MediaError> {
    let early = stage.join("grub-early.cfg");
    write(
        &early,
        format!(
            "search --no-floppy --set=root --file {marker}\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n"
        )
        .as_bytes(),
    )?;
    let mut args = vec![
        "-O",
        "x86_64-efi",
        "-d",
        GRUB_EFI_MODULES.0,
        "-p",
        "/boot/grub",
        "-c",
    ];
    let early = early.to_string_lossy().into_owned();
    let out = out.to_string_lossy().into_owned();
    args.extend([early.as_str(), "-o", out.as_str()]);
    args.extend(GRUB_MODULES.split(' '));
    run("grub-mkimage", "grub-common", &args)
}

/// Every file of `tree` copied into the FAT file system image `fat` (mtools:
/// no mount, no root).
pub(super) fn fill_fat(fat: &Path, tree: &Path) -> Result<(), MediaError> {
    let fat = fat.to_string_lossy().into_owned();
    let entries = std::fs::read_dir(tree).map_err(io_err(tree))?;
    let mut sources: Vec<String> = entries
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    sources.sort();
    let mut args = vec!["-i", fat.as_str(), "-s", "-Q"];
    args.extend(sources.iter().map(String::as_str));
    args.push("::/");
    // mtools refuses images whose geometry it does not expect unless told not
    // to check; mkfs.vfat's are fine.
    run_with_env("mcopy", "mtools", &args, &[("MTOOLS_SKIP_CHECK", "1")])
}

/// [`run`], with environment variables for the tool.
pub(super) fn run_with_env(
    tool: &str,
    package: &'static str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(), MediaError> {
    let mut cmd = Command::new(tool);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            MediaError::MissingTool {
                tool: tool.to_string(),
                package,
            }
        } else {
            MediaError::Io {
                path: PathBuf::from(tool),
                source: e,
            }
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Err(MediaError::Tool {
        tool: tool.to_string(),
        status: out.status.to_string(),
        output: text.lines().rev().take(6).collect::<Vec<_>>().join(" / "),
    })
}

/// Total size of the files under `dir`.
pub(super) fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()) + 4096,
            Ok(_) => e
                .metadata()
                .map(|m| m.len().div_ceil(4096) * 4096)
                .unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// SYSLINUX's (or ISOLINUX's) configuration and `modules` in `dir` of the tree.
pub(super) fn syslinux_files(
    parts: &Parts,
    dir: &str,
    config: &str,
    modules: &[&str],
) -> Result<(), MediaError> {
    write(
        &parts.tree.join(dir).join(config),
        syslinux_cfg(parts.entries, parts.opts.menu_timeout).as_bytes(),
    )?;
    for m in modules {
        place(
            Path::new(&format!("{SYSLINUX_MODULES}/{m}")),
            &parts.tree.join(dir).join(m),
        )?;
    }
    Ok(())
}

/// The USB stick image: a protective MBR with SYSLINUX's GPT boot code, a GPT
/// with one FAT32 EFI system partition (marked legacy-BIOS-bootable) holding
/// SYSLINUX, GRUB for UEFI at the removable-media path, and the tree.
pub(super) fn build_raw(parts: &Parts) -> Result<(), MediaError> {
    let (opts, stage, tree) = (parts.opts, parts.stage, parts.tree);
    let (grub_efi, out) = (parts.grub_efi, parts.out);
    // ldlinux.c32 comes with `syslinux --install`.
    syslinux_files(parts, "boot/syslinux", "syslinux.cfg", &MENU_MODULES[1..])?;
    place(grub_efi, &tree.join("EFI/BOOT/BOOTX64.EFI"))?;
    // Room for the files, FAT's own tables and a little slack; FAT32 needs 33 MiB.
    let mib = (tree_size(tree) * 11 / 10 / (1 << 20) + 16).max(64);
    let fat = stage.join("fat.img");
    let fat_str = fat.to_string_lossy().into_owned();
    let blocks = (mib * 1024).to_string();
    run(
        "mkfs.vfat",
        "dosfstools",
        &["-C", "-F", "32", "-n", &opts.label, &fat_str, &blocks],
    )?;
    fill_fat(&fat, tree)?;
    run(
        "syslinux",
        "syslinux",
        &["--install", "--directory", "/boot/syslinux", &fat_str],
    )?;
    // The disk: 1 MiB before the partition, 1 MiB after it for the backup GPT.
    let disk_bytes = (mib + 2) << 20;
    let file = std::fs::File::create(out).map_err(io_err(out))?;
    file.set_len(disk_bytes).map_err(io_err(out))?;
    drop(file);
    let table = format!(
        "label: gpt\nfirst-lba: 2048\nstart=2048, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"{}\", attrs=\"LegacyBIOSBootable\"\n",
        mib * 2048,
        opts.label
    );
    let table_file = stage.join("table.sfdisk");
    write(&table_file, table.as_bytes())?;
    let out_str = out.to_string_lossy().into_owned();
    let status = Command::new("sh")
        .args(["-c", "exec sfdisk -q \"$1\" <\"$2\""])
        .arg("sh")
        .arg(&out_str)
        .arg(&table_file)
        .output()
        .map_err(io_err(Path::new("sfdisk")))?;
    if !status.status.success() {
        return Err(MediaError::Tool {
            tool: "sfdisk".into(),
            status: status.status.to_string(),
            output: String::from_utf8_lossy(&status.stderr).trim().to_string(),
        });
    }
    // The partition's bytes, then SYSLINUX's GPT-aware boot code in the MBR
    // (its first 440 bytes: the partition table stays sfdisk's).
    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io_err(out))?;
    let mut fat_file = std::fs::File::open(&fat).map_err(io_err(&fat))?;
    use std::io::{Seek, SeekFrom, Write};
    disk.seek(SeekFrom::Start(1 << 20)).map_err(io_err(out))?;
    io::copy(&mut fat_file, &mut disk).map_err(io_err(out))?;
    let mbr_code = std::fs::read(GPTMBR.0).map_err(io_err(Path::new(GPTMBR.0)))?;
    let code = mbr_code.get(..440).ok_or_else(|| MediaError::Damaged {
        path: GPTMBR.0.into(),
        reason: "shorter than 440 bytes".into(),
    })?;
    disk.seek(SeekFrom::Start(0)).map_err(io_err(out))?;
    disk.write_all(code).map_err(io_err(out))?;
    disk.sync_all().map_err(io_err(out))?;
    Ok(())
}

/// The ISO: ISOLINUX for BIOS (El Torito, no emulation), an El Torito EFI
/// image holding GRUB for UEFI, made hybrid (MBR and GPT) so that the same
/// file written to a stick boots too.
pub(super) fn build_iso(parts: &Parts) -> Result<(), MediaError> {
    let (opts, stage, tree) = (parts.opts, parts.stage, parts.tree);
    let (grub_efi, out) = (parts.grub_efi, parts.out);
    syslinux_files(parts, "isolinux", "isolinux.cfg", MENU_MODULES)?;
    place(
        Path::new(ISOLINUX_BIN.0),
        &tree.join("isolinux/isolinux.bin"),
    )?;
    // The EFI image: just GRUB, which reads the rest from the ISO 9660 tree.
    let efi = tree.join("boot/efiboot.img");
    let efi_str = efi.to_string_lossy().into_owned();
    let kib = (std::fs::metadata(grub_efi).map_err(io_err(grub_efi))?.len() / 1024 + 512).max(1440);
    run(
        "mkfs.vfat",
        "dosfstools",
        &["-C", "-n", "EFIBOOT", &efi_str, &kib.to_string()],
    )?;
    let efi_tree = stage.join("efi-tree");
    place(grub_efi, &efi_tree.join("EFI/BOOT/BOOTX64.EFI"))?;
    fill_fat(&efi, &efi_tree)?;
    let out_str = out.to_string_lossy().into_owned();
    let tree_str = tree.to_string_lossy().into_owned();
    run(
        "xorriso",
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-o",
            &out_str,
            "-V",
            &opts.label,
            "-J",
            "-joliet-long",
            "-R",
            "-isohybrid-mbr",
            ISOHDPFX.0,
            "-c",
            "isolinux/boot.cat",
            "-b",
            "isolinux/isolinux.bin",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "-eltorito-alt-boot",
            "-e",
            "boot/efiboot.img",
            "-no-emul-boot",
            "-isohybrid-gpt-basdat",
            &tree_str,
        ],
    )
}
