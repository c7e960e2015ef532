//! Framing: a Carom connection is a sequence of `length (u16, big-endian) ‖ body` frames.
//!
//! During the handshake each body starts with a kind byte ([`HandshakeKind`]); afterwards every
//! body is one Noise transport message (ciphertext and tag). Bodies are at most 65,535 bytes,
//! which is also Noise's limit.

/// Largest frame body, in bytes.
pub const MAX_FRAME_BODY: usize = 65_535;
/// The magic at the start of a `HELLO`.
pub const MAGIC: &[u8; 5] = b"CAROM";

/// The kind byte of a handshake frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum HandshakeKind {
    /// Initiator → responder: versions, pattern and Noise message 1.
    Hello = 1,
    /// Responder → initiator: Noise message 2.
    Response = 2,
    /// Initiator → responder: Noise message 3 (XX only).
    Finish = 3,
    /// Responder → initiator: "start again" (unsupported version, or IK undecryptable).
    Retry = 4,
}

impl HandshakeKind {
    pub(crate) fn from_byte(byte: u8) -> Option<HandshakeKind> {
        match byte {
            1 => Some(HandshakeKind::Hello),
            2 => Some(HandshakeKind::Response),
            3 => Some(HandshakeKind::Finish),
            4 => Some(HandshakeKind::Retry),
            _ => None,
        }
    }
}

/// Append one frame to `out`.
///
/// # Panics
/// If `body` is longer than [`MAX_FRAME_BODY`]: callers size their bodies first.
pub(crate) fn write_frame(out: &mut Vec<u8>, body: &[u8]) {
    let len = u16::try_from(body.len()).expect("frame bodies are sized below 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// Reassembles frames from stream bytes. Holds at most one partial frame (≤ 64 KiB + 2) beyond
/// the bytes of the last push.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    /// Add bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame body, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let pending = &self.buf[self.start..];
        if pending.len() < 2 {
            self.compact();
            return None;
        }
        let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
        if pending.len() < 2 + len {
            self.compact();
            return None;
        }
        let body = pending[2..2 + len].to_vec();
        self.start += 2 + len;
        Some(body)
    }

    /// The bytes received but not yet returned as frames: the start of the next frame.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drop consumed bytes so the buffer never grows beyond one frame plus the last read.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reassemble_from_any_split() {
        let mut wire = Vec::new();
        let bodies: Vec<Vec<u8>> = vec![vec![], vec![1], vec![2; 300], vec![3; MAX_FRAME_BODY]];
        for b in &bodies {
            write_frame(&mut wire, b);
        }
        for chunk in [1, 2, 3, 7, 1000, wire.len()] {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                reader.push(piece);
                while let Some(frame) = reader.next_frame() {
                    got.push(frame);
                }
            }
            assert_eq!(got, bodies, "chunk size {chunk}");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn the_buffer_stays_bounded() {
        let mut reader = FrameReader::default();
        let mut wire = Vec::new();
        for _ in 0..1000 {
            write_frame(&mut wire, &[7u8; 100]);
        }
        for piece in wire.chunks(4096) {
            reader.push(piece);
            while reader.next_frame().is_some() {}
            assert!(
                reader.buf.len() <= 4096 + 102,
                "buffer grew to {}",
                reader.buf.len()
            );
        }
    }
}
