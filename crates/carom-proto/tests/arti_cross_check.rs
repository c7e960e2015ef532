//! Onion addresses derived and parsed by Carom agree with arti's own code, key by key.

use carom_proto::{IdentityKey, OnionAddress};
use safelog::DisplayRedacted as _;
use tor_hscrypto::pk::{HsId, HsIdKey, HsIdKeypair};
use tor_llcrypto::pk::ed25519;

#[test]
fn derivation_and_parsing_match_arti_on_many_random_keys() {
    let mut rng = rand::thread_rng();
    for _ in 0..500 {
        let ours = IdentityKey::generate(&mut rng);
        let seed = ours.seed();

        // arti's view of the same seed, built the way an onion service is launched.
        let keypair = ed25519::Keypair::from_bytes(&seed);
        let hs_id: HsId =
            HsIdKey::from(&HsIdKeypair::from(ed25519::ExpandedKeypair::from(&keypair))).id();
        let arti_text = hs_id.display_unredacted().to_string();

        assert_eq!(ours.address().to_string(), arti_text, "derivation differs");
        assert_eq!(
            OnionAddress::parse(&arti_text),
            Ok(ours.address()),
            "we misparse arti's form"
        );
        let reparsed: HsId = ours
            .address()
            .to_string()
            .parse()
            .expect("arti parses our form");
        assert_eq!(reparsed, hs_id, "arti reads our form as another key");
        assert_eq!(ours.address().public_key(), *hs_id.as_ref());
    }
}

#[test]
fn addresses_arti_rejects_are_rejected_too() {
    let good = IdentityKey::generate(&mut rand::thread_rng())
        .address()
        .to_string();
    // One character changed: arti refuses it (checksum); so must we.
    let mut typo = good.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).expect("ascii");
    assert!(typo.parse::<HsId>().is_err());
    assert!(OnionAddress::parse(&typo).is_err());
}
