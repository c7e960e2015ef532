//! The CBOR message decoder on arbitrary bytes: never panics, and every message it accepts
//! re-encodes to bytes that decode to the same message.
#![no_main]

use carom_proto::{Decoded, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Known(message)) = Message::decode(data) {
        assert_eq!(Message::decode(&message.encode()), Ok(Decoded::Known(message)));
    }
});
