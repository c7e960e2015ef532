//! The onion-address parser on arbitrary text: never panics, and whatever it accepts
//! re-parses to the same address from its canonical form.
#![no_main]

use carom_proto::OnionAddress;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(address) = OnionAddress::parse(text)
    {
        assert_eq!(OnionAddress::parse(&address.to_string()), Ok(address));
    }
});
