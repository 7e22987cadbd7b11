//! A link with a propagation delay, for benchmarks: two TAP devices joined in
//! user space, every frame held for the one-way delay before it leaves by the
//! other device. The rate is shaped by `tc tbf` on the devices; this adds the
//! delay, which `tc` cannot give on kernels without netem.
//!
//! usage: delay-line TAP_A TAP_B ONE_WAY_DELAY_US [QUEUE_FRAMES]
//!
//! Creates both devices with virtio-net headers and offloads on, so TCP crosses
//! as segmentation-offload super-frames (tens of KiB each) and a frame costs two
//! system calls whatever its size. Prints `ready` once both exist, then runs
//! until killed; move the devices into namespaces with `ip link set DEV netns NS`
//! (the open descriptors follow them). A full queue drops frames, as a router's
//! does.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
/// A virtio-net header and the largest segmentation-offload frame.
const FRAME_MAX: usize = 10 + 65_536 + 1024;

fn tap(name: &str) -> std::io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    if name.len() > 15 {
        return Err(std::io::Error::other(format!(
            "{name}: longer than 15 bytes"
        )));
    }
    // struct ifreq: the name, then the flags (a short) at offset 16.
    let mut ifreq = [0u8; 40];
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    ifreq[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` is as
    // large as; the descriptor is open for the call's length.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETOFFLOAD takes its flags by value.
    let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, offloads) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Frames read from `from`, stamped with when they may leave.
fn receive(mut from: File, queue: SyncSender<(Instant, Vec<u8>)>, delay: Duration) {
    let mut buf = vec![0u8; FRAME_MAX];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("delay-line: reading: {e}");
                return;
            }
        };
        match queue.try_send((Instant::now() + delay, buf[..n].to_vec())) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Frames written to `to` once their time has come, in order.
fn send(mut to: File, queue: Receiver<(Instant, Vec<u8>)>) {
    for (due, frame) in queue {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if let Err(e) = to.write(&frame) {
            // A frame the kernel refuses (the device down) is lost, as on a wire.
            if e.kind() != std::io::ErrorKind::Interrupted {
                eprintln!("delay-line: writing: {e}");
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: delay-line TAP_A TAP_B ONE_WAY_DELAY_US [QUEUE_FRAMES]");
        std::process::exit(2);
    }
    let delay = Duration::from_micros(args[3].parse().expect("ONE_WAY_DELAY_US: microseconds"));
    let frames: usize = args
        .get(4)
        .map_or(8192, |f| f.parse().expect("QUEUE_FRAMES: a count"));
    let open = |name: &str| {
        tap(name).unwrap_or_else(|e| {
            eprintln!("delay-line: creating {name}: {e}");
            std::process::exit(1)
        })
    };
    let (a, b) = (open(&args[1]), open(&args[2]));
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let (to_b, from_a) = sync_channel(frames);
    let (to_a, from_b) = sync_channel(frames);
    let threads = [
        std::thread::spawn(move || receive(a, to_b, delay)),
        std::thread::spawn(move || send(b2, from_a)),
        std::thread::spawn(move || receive(b, to_a, delay)),
        std::thread::spawn(move || send(a2, from_b)),
    ];
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}
