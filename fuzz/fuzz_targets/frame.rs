//! The frame reassembler on arbitrary chunked input: never panics, never yields a body larger
//! than a frame, never holds more than one partial frame plus the last chunk.
#![no_main]

use carom_proto::{FrameReader, MAX_FRAME_BODY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::default();
    // The first byte chooses the chunk size, so splits are explored too.
    let (size, rest) = data.split_first().map_or((1, data), |(s, r)| (usize::from(*s) + 1, r));
    for chunk in rest.chunks(size) {
        reader.push(chunk);
        while let Some(frame) = reader.next_frame() {
            assert!(frame.len() <= MAX_FRAME_BODY);
        }
        assert!(reader.buffered() <= MAX_FRAME_BODY + 2 + chunk.len());
    }
});
