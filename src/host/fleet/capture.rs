//! Machines the inventory sends to capture (`capture = "NAME:TAG"`): the
//! credential their boot script gave lets them upload that one image to the
//! server, and its publication completes them as a deploy's `complete` does.

use super::{Fleet, unix_now};
use crate::format::digest::{Digest, ImageRef};
use crate::format::inventory::Mac;

/// Why a machine's credential may not capture (each is a 403).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureRefusal {
    #[error(
        "{0} is not sent to capture: its inventory entry has no capture = \"NAME:TAG\" (or it is not listed)"
    )]
    NotCapturing(Mac),
    #[error(
        "this is not a credential this server gave {0} for its capture (one given before its capture was published, it failed too often or it was reprovisioned no longer counts)"
    )]
    WrongCredential(Mac),
    #[error(
        "{mac} may capture {allowed} only, not {asked} (its inventory entry says capture = \"{allowed}\")"
    )]
    OtherImage {
        mac: Mac,
        allowed: String,
        asked: String,
    },
}

impl Fleet {
    /// Whether the inventory sends any machine to capture.
    pub fn takes_captures(&self) -> bool {
        self.with_inventory(|i| i.hosts.values().any(|h| h.capture.is_some()))
    }

    /// The image (name, tag) machine `mac` may capture with `credential`: the
    /// one its entry names, with a credential of its boot script since its
    /// last capture, deploy or reprovision.
    pub fn capture_allowed(
        &self,
        mac: Mac,
        credential: &str,
    ) -> Result<(String, String), CaptureRefusal> {
        let target = self.with_inventory(|i| i.hosts.get(&mac).and_then(|h| h.capture.clone()));
        let Some(ImageRef::Tag { name, tag }) = target else {
            return Err(CaptureRefusal::NotCapturing(mac));
        };
        let generation = self
            .machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&mac)
            .map_or(0, |m| m.generation);
        if !self.keys.credential_valid(credential, mac, generation) {
            return Err(CaptureRefusal::WrongCredential(mac));
        }
        Ok((name, tag))
    }

    /// Machine `mac`'s capture, with `credential`, was published as
    /// `name:tag`, manifest `digest`: like a completed deploy, its credential
    /// stops counting and its next network boot goes to its own disk, until
    /// it is reprovisioned. False when the credential stopped counting
    /// meanwhile (the operator reprovisioned it): the image stays published,
    /// the machine as it is.
    pub fn captured(
        &self,
        mac: Mac,
        credential: &str,
        name: &str,
        tag: &str,
        digest: &Digest,
    ) -> bool {
        let token = self.with_inventory(|i| i.hosts.get(&mac).and_then(|h| h.reprovision.clone()));
        let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = machines.get(&mac).cloned().unwrap_or_default();
        if !self.keys.credential_valid(credential, mac, m.generation) {
            return false;
        }
        m.in_progress = false;
        m.completed = Some(digest.to_string());
        m.committed = false;
        m.captured = Some(format!("{name}:{tag}"));
        m.failures = 0;
        m.last_error = None;
        // The reprovision this capture answered: the inventory's value when
        // it started, or now when its environment never said it started.
        m.reprovisioned = m.pending_token.take().or(token);
        m.reprovision_asked = false;
        m.generation += 1;
        m.phase = Some("captured".into());
        m.last_seen = unix_now();
        self.store(mac, &m);
        machines.insert(mac, m);
        drop(machines);
        self.changed();
        log::info!("{mac}: captured as {name}:{tag}; it boots its own disk from now on");
        true
    }
}
