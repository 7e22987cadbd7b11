//! What a deploy starts from, gathered before anything is written: the kernel
//! command line, drivers, media and their inventory, the network, the sources
//! and the manifest, the host's own files, the target disk and the previous
//! OS; and the refusals decided from them (a stale or older release).

use super::{agent, disks, drivers, media, net, status, uptime};
use crate::engine::{self, Resolved, Trust};
use crate::format::cmdline::{self, Config, RepoSource};
use crate::format::hardware::{self, Hardware};
use crate::format::manifest::Manifest;
use crate::format::status::Event;
use crate::source::{Chain, DirSource, DnsResolver, HttpSource, NameResolver, RetryPolicy, Source};
use crate::statepart::{self, StateDisk};
use crate::sys;
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn parse_config(cmdline_text: &str) -> Result<Config> {
    let config = cmdline::parse(cmdline_text).map_err(|e| {
        anyhow!("{e}; nothing was written. Fix the boot entry's kernel command line")
    })?;
    if let Some(url) = &config.status {
        super::console::usable_url(url)
            .map_err(|e| anyhow!("imprint.status: {e}; nothing was written"))?;
    }
    if let Some(name) = config.target.as_ref().or(config.hostname.as_ref()) {
        status().set_target(name);
    }
    status().send(Event::Booted {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime: uptime(),
    });
    Ok(config)
}

pub(super) fn load_drivers() {
    let loaded = drivers::Drivers::open().coldplug();
    log::info!(
        "loaded {} driver modules: {}",
        loaded.len(),
        loaded.join(" ")
    );
}

/// Says what hardware this machine has, on the console and as a status event
/// (queued until the network is up): once its drivers are loaded, so its
/// disks and interfaces are there to see.
pub(super) fn report_hardware() -> Hardware {
    let hardware = crate::inspect::collect(std::path::Path::new("/"));
    log::info!("hardware: {}", hardware.summary());
    status().send(Event::Hardware {
        hardware: hardware.clone(),
    });
    hardware
}

/// Refuses an image whose requirements this machine's firmware or
/// architecture does not meet, before any disk is touched.
pub(super) fn refuse_unmet(manifest: &Manifest, hardware: &Hardware) -> Result<()> {
    match hardware::unmet_platform(&manifest.requirements, hardware) {
        Some(why) => bail!("{}: {why}; nothing was written", manifest.name),
        None => Ok(()),
    }
}

/// DHCP or `ip=`; then status events can go out. Returns the name resolver the
/// lease's DNS servers make.
fn bring_up_network(config: &Config) -> Result<Arc<dyn NameResolver>> {
    let lease = net::bring_up(&config.ip, config.bootif, config.dhcp_timeout)
        .context("bringing up the network")?;
    let target_name = config
        .target
        .clone()
        .or(config.hostname.clone())
        .unwrap_or_else(|| {
            lease
                .nic
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        });
    status().set_target(&target_name);
    let servers: Vec<std::net::SocketAddr> = lease
        .dns
        .iter()
        .map(|ip| std::net::SocketAddr::from((*ip, 53)))
        .collect();
    let resolver: Arc<dyn NameResolver> = Arc::new(DnsResolver {
        servers: servers.clone(),
    });
    if let Some(url) = &config.status {
        status().connect(
            url,
            config.credential.as_ref().map(|c| c.0.clone()),
            resolver.clone(),
        );
    }
    status().remember(&servers);
    log::info!(
        "network up on {}: {}/{} via {}",
        lease.nic.name,
        lease.address,
        lease.prefix,
        lease
            .router
            .map_or("no gateway".to_string(), |r| r.to_string())
    );
    status().send(Event::NetworkUp {
        interface: lease.nic.name.clone(),
        address: format!("{}/{}", lease.address, lease.prefix),
    });
    Ok(resolver)
}

/// How long a medium named in `imprint.repo=` may take to appear.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

/// The media `imprint.repo=` names, mounted read-only, in its order (none for
/// its URLs). A medium that does not appear is fatal only when it was the one
/// place named.
pub(super) fn mount_media(config: &Config) -> Result<Vec<Option<media::Medium>>> {
    let alone = config.repo.len() == 1;
    let mut mounted = Vec::new();
    for (i, source) in config.repo.iter().enumerate() {
        let RepoSource::Media { by, .. } = source else {
            mounted.push(None);
            continue;
        };
        match media::mount(by, i, MEDIA_WAIT) {
            Ok(m) => mounted.push(Some(m)),
            Err(e) if !alone => {
                log::warn!("{}; going on without it", crate::error_text(&e));
                mounted.push(None);
            }
            Err(e) => {
                return Err(e.context(format!(
                    "finding the repository {source}; nothing was written"
                )));
            }
        }
    }
    Ok(mounted)
}

/// Largest inventory read from a medium.
const MAX_MEDIA_INVENTORY: u64 = 1 << 20;

/// A medium's inventory (`imprint media build --hosts`): the entry for one of
/// this machine's NICs (or the default) chooses its image, name, cloud-init
/// files and settings, as `imprint serve --hosts` would; they follow the
/// command line's own arguments, so they win. None: no inventory, or nothing
/// in it for this machine.
pub(super) fn media_inventory_choice(
    cmdline_text: &str,
    media: &[Option<media::Medium>],
) -> Result<Option<Config>> {
    use crate::format::inventory::{self, Mac};
    use crate::format::provision::{self, Decision, Machine, Platform};
    for medium in media.iter().flatten() {
        let root = sys::Root::open(&medium.root).context("opening the medium")?;
        let text = match root.read(media::INVENTORY, MAX_MEDIA_INVENTORY + 1) {
            Ok(t) if t.len() as u64 > MAX_MEDIA_INVENTORY => {
                bail!("the medium's {} is larger than 1 MiB", media::INVENTORY)
            }
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context(format!("reading the medium's {}", media::INVENTORY)),
        };
        let (inventory, problems) = inventory::parse(&text).map_err(|p| {
            anyhow!(
                "the medium's {}: {p}; nothing was written. Build the medium again with a good --hosts file",
                media::INVENTORY
            )
        })?;
        for p in &problems {
            log::warn!("the medium's {}: {p}", media::INVENTORY);
        }
        let platform = if sys::is_uefi() {
            Platform::Efi
        } else {
            Platform::Bios
        };
        let macs: Vec<Mac> = net::nics().iter().map(|n| Mac(n.mac)).collect();
        // A listed NIC first; else the default, for the first NIC (or none).
        let listed = macs.iter().find(|m| inventory.hosts.contains_key(m));
        let mac = listed.or(macs.first()).copied().unwrap_or(Mac([0; 6]));
        match provision::decide(&inventory, mac, &Machine::default(), platform, 1) {
            Decision::Deploy(d) => {
                let args = provision::deploy_args(&d, mac).join(" ");
                log::info!(
                    "{mac} {} in the medium's inventory: {args}",
                    if listed.is_some() {
                        "is listed"
                    } else {
                        "is not listed; the default"
                    }
                );
                let config = cmdline::parse(&format!("{cmdline_text} {args}"))
                    .map_err(|e| anyhow!("the medium's inventory entry for {mac}: {e}"))?;
                return Ok(Some(config));
            }
            Decision::Local { .. } => log::info!(
                "{mac} is not in the medium's inventory: deploying what the boot entry names"
            ),
            Decision::Hold(why) => bail!("the medium's inventory: {why}"),
            Decision::Capture(d) => bail!(
                "the medium's inventory sends {mac} to capture {}: a capture uploads to imprint serve, so boot the machine from the network for it",
                d.image
            ),
        }
    }
    Ok(None)
}

/// The network, when a repository URL or a status server needs it. A medium
/// that holds the repository makes it optional: the deploy goes on without.
pub(super) fn network_if_wanted(
    config: &Config,
    media: &[Option<media::Medium>],
) -> Result<Option<Arc<dyn NameResolver>>> {
    let urls = config.repo.iter().any(|s| matches!(s, RepoSource::Url(_)));
    if !urls && config.status.is_none() {
        log::info!("the repository is on the medium: no network needed");
        return Ok(None);
    }
    match bring_up_network(config) {
        Ok(resolver) => Ok(Some(resolver)),
        Err(e) if media.iter().any(Option::is_some) => {
            log::warn!("{}; going on with the medium alone", crate::error_text(&e));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Every place the repository can be read from, in `imprint.repo=` order.
pub(super) fn open_sources(
    config: &Config,
    media: &[Option<media::Medium>],
    resolver: Option<Arc<dyn NameResolver>>,
) -> Result<Chain> {
    let mut parts: Vec<(String, Box<dyn Source>)> = Vec::new();
    for (source, medium) in config.repo.iter().zip(media) {
        match (source, medium, &resolver) {
            (RepoSource::Url(url), _, Some(resolver)) => {
                let timeout = Duration::from_secs(30);
                let proxy = config
                    .proxy
                    .as_deref()
                    .map(|p| crate::source::Proxy::new(p, resolver.clone(), timeout, config.jobs))
                    .transpose()
                    .map_err(|e| anyhow!("imprint.proxy: {e}"))?;
                let source = HttpSource::new(
                    url,
                    resolver.clone(),
                    timeout,
                    config.jobs,
                    super::ca_roots(),
                )?;
                parts.push((url.clone(), Box::new(source.with_proxy(proxy))));
            }
            (RepoSource::Media { dir, .. }, Some(m), _) => parts.push((
                source.to_string(),
                Box::new(DirSource::new(&m.root.join(dir))),
            )),
            _ => {}
        }
    }
    if parts.is_empty() {
        bail!("none of the repositories in imprint.repo= can be reached; nothing was written");
    }
    Ok(Chain::new(parts))
}

/// Bytes read from media and from the network, from a source's tally.
pub(super) fn media_and_network(source: &dyn Source) -> (u64, u64) {
    source
        .tally()
        .iter()
        .fold((0, 0), |(media, network), (name, bytes)| {
            if name.starts_with("media:") {
                (media + bytes, network)
            } else {
                (media, network + bytes)
            }
        })
}

/// The repository, and the manifest the command line trusts.
pub(super) fn fetch_manifest(
    config: &Config,
    resolver: Option<Arc<dyn NameResolver>>,
    media: &[Option<media::Medium>],
) -> Result<(Chain, Resolved)> {
    let repo = config
        .repo
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let image = config
        .image
        .as_ref()
        .ok_or_else(|| anyhow!("imprint.image is missing"))?;
    let source = open_sources(config, media, resolver)?;
    source.preconnect(config.jobs);
    let pubkey = config
        .pubkey
        .as_deref()
        .map(crate::format::signature::parse_public_key)
        .transpose()?;
    let resolved = engine::resolve(&source, image, pubkey.as_ref(), &RetryPolicy::default())
        .with_context(|| format!("fetching the manifest of {image} from {repo}"))?;
    if resolved.trust == Trust::Unverified {
        log::warn!(
            "{image} is trusted only because the repository says so; pin imprint.image=sha256:... or set imprint.pubkey="
        );
    }
    Ok((source, resolved))
}

/// The host's cloud-init data the command line names, fetched before anything is
/// written: a host that asked for its configuration must not come up without it.
pub(super) fn fetch_host_data(config: &Config, source: &dyn Source) -> Result<agent::HostData> {
    /// cloud-init's own files run to a few KiB; this leaves room for scripts.
    const LIMIT: u64 = 1 << 20;
    let credential = config.credential.as_ref().map(|c| c.0.as_str());
    let fetch = |key: &str, path: &Option<String>| -> Result<Option<Vec<u8>>> {
        let Some(path) = path else { return Ok(None) };
        let mut buf = Vec::new();
        let fetched = match credential {
            // The host's own files: only its deploy may read them.
            Some(c) => source.fetch_as(path, LIMIT, &mut buf, c),
            None => source.fetch(path, LIMIT, &mut buf),
        };
        fetched.with_context(|| {
            format!("fetching {key}={path} from the repository; nothing was written")
        })?;
        log::info!("{key}: {} bytes from {path}", buf.len());
        Ok(Some(buf))
    };
    Ok(agent::HostData {
        user_data: fetch("imprint.user-data", &config.user_data)?,
        network_config: fetch("imprint.network-config", &config.network_config)?,
    })
}

/// The target disk: named on the command line, or the one fixed, unused disk
/// large enough. Disks may appear a little after their drivers load.
pub(super) fn wait_for_disk(config: &Config, needed: u64) -> Result<disks::DiskInfo> {
    let start = Instant::now();
    let wait = Duration::from_secs(30);
    let mut said = false;
    let disk = loop {
        let found = disks::scan();
        match disks::choose(&found, config.disk.as_ref(), needed) {
            Ok(d) => break d.clone(),
            Err(e @ (disks::DiskError::NoDisks(_) | disks::DiskError::NoMatch { .. }))
                if start.elapsed() < wait =>
            {
                if !said {
                    log::info!(
                        "waiting up to {} s for the target disk ({e})",
                        wait.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e.into()),
        }
    };
    log::info!("target disk {} ({} bytes)", disk.dev_path(), disk.size);
    status().send(Event::DiskSelected {
        disk: disk.dev_path(),
        size: Some(disk.size),
        serial: Some(disk.serial.clone()),
        image: None,
        unchanged: false,
    });
    Ok(disk)
}

/// The previous OS for an upgrade: imprint.previous= (a path or hints), or the one
/// other disk whose record says it is the committed OS.
pub(super) fn previous_os(config: &Config, new_disk: &str) -> Result<StateDisk> {
    let wanted = match &config.previous {
        None => None,
        Some(sel) => Some(
            disks::choose(&disks::scan(), Some(sel), 0)
                .map_err(|e| anyhow!("imprint.previous: {e}"))?
                .dev_path(),
        ),
    };
    let all = statepart::state_disks();
    let found = statepart::find_previous(&all, wanted.as_deref(), new_disk)?;
    log::info!(
        "previous OS on {}: its chunks seed the new disk",
        found.device
    );
    Ok(found.clone())
}

/// `imprint.min-issued=`: a release issued before it is refused, so a machine
/// whose disk holds no record yet cannot be given a replayed old release.
pub(super) fn refuse_stale(config: &Config, resolved: &Resolved) -> Result<()> {
    let Some(min_issued) = config.min_issued else {
        return Ok(());
    };
    match &resolved.release {
        Some(release) => release
            .check_fresh(0, Some(min_issued))
            .map_err(|e| anyhow!("{e}; nothing was written")),
        None => bail!(
            "imprint.min-issued= needs a signed release to know when it was issued: give imprint.pubkey= (and sign the image); nothing was written"
        ),
    }
}

/// A signed release never replaces a later release of the same image: not on
/// the target disk, and (upgrades) not the previous OS's. A replayed old
/// signature (an older `NAME:stable`, say) cannot take a machine back to a
/// release it has moved on from, unless the operator says
/// `imprint.allow-downgrade`.
pub(super) fn refuse_downgrade(
    config: &Config,
    resolved: &Resolved,
    disk: &disks::DiskInfo,
    previous: Option<&StateDisk>,
) -> Result<()> {
    let Some(new) = &resolved.release else {
        return Ok(());
    };
    let holders = StateDisk::open(&disk.dev_path())
        .into_iter()
        .chain(previous.cloned());
    for holder in holders {
        let Ok((record, _)) = holder.read_record() else {
            continue;
        };
        let Some(held) = record.release.filter(|_| record.image_name == new.name) else {
            continue;
        };
        if held.issued <= new.issued {
            continue;
        }
        let what = format!(
            "{} holds {}:{} issued at {}, later than {}:{} (issued at {})",
            holder.device, new.name, held.tag, held.issued, new.name, new.tag, new.issued
        );
        if config.allow_downgrade {
            log::warn!("{what}: going back to the older release (imprint.allow-downgrade)");
        } else {
            bail!(
                "{what}: refusing to go back to an older release; nothing was written. Boot with imprint.allow-downgrade to do it anyway"
            );
        }
    }
    Ok(())
}
