//! Helpers for the unit tests: configurations, and driving two sessions to rest.

use std::sync::Arc;
use std::time::Instant;

use super::{Event, Phase, Session, SessionConfig};
use crate::cert::{DeviceCertificate, DeviceKey};
use crate::identity::IdentityKey;

pub(super) fn config(seed: u8) -> Arc<SessionConfig> {
    let identity = IdentityKey::from_seed(&[seed; 32]);
    let device = DeviceKey::from_secret(&[seed + 1; 32]);
    let cert = DeviceCertificate::issue(&identity, &device.public(), 2_000_000_000);
    Arc::new(SessionConfig::new(identity, device, cert))
}

/// Move bytes both ways until neither side has anything to say; accept on the way.
pub(super) fn settle(a: &mut Session, b: &mut Session, now: Instant) -> (Vec<Event>, Vec<Event>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        if let Some(bytes) = a.poll_transmit() {
            moved = true;
            let _ = b.handle_input(&bytes, now);
        }
        if let Some(bytes) = b.poll_transmit() {
            moved = true;
            let _ = a.handle_input(&bytes, now);
        }
        while let Some(e) = a.poll_event() {
            ea.push(e);
        }
        while let Some(e) = b.poll_event() {
            eb.push(e);
        }
        if b.phase() == Phase::AwaitingDecision {
            b.accept(now);
            moved = true;
        }
        if !moved {
            return (ea, eb);
        }
    }
}
