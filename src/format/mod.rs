//! Pure formats: byte layouts and their validation. Nothing here opens a device or a
//! socket; everything works on byte slices or `Read`/`Seek`, so it is unit tested on
//! the host with hostile input (truncations, flipped bytes, random garbage).

pub mod bootcfg;
pub mod bundle;
pub mod cmdline;
pub mod cpio;
pub mod digest;
pub mod dns;
pub mod dps;
pub mod efi;
pub mod ext4;
pub mod fat;
pub mod fstype;
pub mod glob;
pub mod gpt;
pub mod hardware;
pub mod http;
pub mod inventory;
pub mod ipxe;
pub mod kmod;
pub mod manifest;
pub mod mbr;
pub mod netlink;
pub mod pe;
pub mod provision;
pub mod repository;
pub mod sdboot;
pub mod signature;
pub mod state;
pub mod status;
pub mod swap;
pub mod timing;
pub mod usage;

/// Whether every byte of `buf` is zero. Folds 64-byte blocks with OR so the compiler
/// emits wide vector loads; stops early at the first non-zero block.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for block in blocks.by_ref() {
        let folded = block
            .chunks_exact(16)
            .map(|w| u128::from_ne_bytes(w.try_into().unwrap_or_default()))
            .fold(0, |acc, w| acc | w);
        if folded != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_detection_sees_every_byte() {
        for len in [0usize, 1, 63, 64, 65, 4096, 1 << 20] {
            let mut buf = vec![0u8; len];
            assert!(super::is_zero(&buf));
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    continue;
                }
                buf[at] = 1;
                assert!(!super::is_zero(&buf), "len {len} byte {at}");
                buf[at] = 0;
            }
        }
    }
}
