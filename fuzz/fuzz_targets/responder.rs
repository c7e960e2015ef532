//! A responding session fed arbitrary bytes (the first byte picks how they are split into
//! reads): never panics, and nothing unauthenticated ever yields a verified peer.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use carom_proto::{DeviceCertificate, DeviceKey, IdentityKey, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fn config() -> Arc<SessionConfig> {
    static CONFIG: OnceLock<Arc<SessionConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let identity = IdentityKey::from_seed(&[2; 32]);
            let device = DeviceKey::from_secret(&[3; 32]);
            let cert = DeviceCertificate::issue(&identity, &device.public(), u64::MAX);
            Arc::new(SessionConfig::new(identity, device, cert))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut rng = FixedRng(7);
    let mut session = Session::responder(config(), 1_800_000_000, now, &mut rng);
    let (size, rest) = data.split_first().map_or((1, data), |(s, r)| (usize::from(*s) + 1, r));
    for chunk in rest.chunks(size) {
        let _ = session.handle_input(chunk, now);
        while session.poll_event().is_some() {}
        let _ = session.poll_transmit();
    }
    assert!(session.peer().is_none(), "authenticated a peer from fuzz input");
});

/// A deterministic CSPRNG stand-in (fills with a counter); fine for fuzzing the parser paths.
struct FixedRng(u8);
impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        u32::from(self.next())
    }
    fn next_u64(&mut self) -> u64 {
        u64::from(self.next())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next();
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for FixedRng {}
impl FixedRng {
    fn next(&mut self) -> u8 {
        self.0 = self.0.wrapping_add(1);
        self.0
    }
}
