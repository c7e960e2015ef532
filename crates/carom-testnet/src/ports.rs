//! Reserving loopback ports so that several networks can run side by side.
//!
//! Ports are handed out in fixed-size blocks below the kernel's ephemeral range. A block is ours
//! while we hold an exclusive lock on its lock file (so two test processes never pick the same
//! block, and a crashed process releases its block automatically), and only if every port in it
//! can be bound right now (so a block used by a detached network, or by anything else on the
//! machine, is skipped).

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use crate::err::{Error, Result};

/// Ports in one block.
pub(crate) const BLOCK_SIZE: u16 = 32;
/// First port of the first block.
const FIRST_PORT: u16 = 20_000;
/// Number of blocks (20000..29600, below Linux's default ephemeral range 32768..60999).
const BLOCKS: u16 = 300;

/// A reserved block of [`BLOCK_SIZE`] consecutive loopback ports.
#[derive(Debug)]
pub(crate) struct PortBlock {
    first: u16,
    next: u16,
    /// Held for the lock; released when dropped or when the process dies.
    _lock: File,
}

impl PortBlock {
    /// Reserve a free block.
    pub(crate) fn reserve() -> Result<PortBlock> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        // Start at a block derived from our PID so concurrent processes rarely contend.
        let start = u16::try_from(std::process::id() % u32::from(BLOCKS)).unwrap_or(0);
        for i in 0..BLOCKS {
            let block = (start + i) % BLOCKS;
            let path = dir.join(format!("block-{block}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("opening", &path, e))?;
            if file.try_lock().is_err() {
                continue;
            }
            let first = FIRST_PORT + block * BLOCK_SIZE;
            if (first..first + BLOCK_SIZE).all(port_is_free) {
                return Ok(PortBlock {
                    first,
                    next: first,
                    _lock: file,
                });
            }
        }
        Err(Error::NoFreePorts {
            size: BLOCK_SIZE,
            first: FIRST_PORT,
            last: FIRST_PORT + BLOCKS * BLOCK_SIZE - 1,
        })
    }

    /// The next unused port of the block.
    ///
    /// # Panics
    /// If more than [`BLOCK_SIZE`] ports are taken: a programming error in this crate.
    pub(crate) fn take(&mut self) -> u16 {
        assert!(
            self.next < self.first + BLOCK_SIZE,
            "port block exhausted: raise BLOCK_SIZE"
        );
        let port = self.next;
        self.next += 1;
        port
    }
}

/// Whether a TCP port on 127.0.0.1 can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("carom-testnet-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_reservations_get_different_blocks() {
        let mut a = PortBlock::reserve().expect("first block");
        let mut b = PortBlock::reserve().expect("second block");
        let (pa, pb) = (a.take(), b.take());
        assert_ne!(
            pa / BLOCK_SIZE,
            pb / BLOCK_SIZE,
            "blocks overlap: {pa} {pb}"
        );
        assert!(port_is_free(pa) && port_is_free(pb));
    }

    #[test]
    fn a_busy_port_makes_its_block_unusable() {
        let block = PortBlock::reserve().expect("block");
        let first = block.first;
        // Occupy a port of that block, release the lock, and reserve again: the busy block
        // must not be handed out.
        let _busy = TcpListener::bind((Ipv4Addr::LOCALHOST, first + 5)).expect("bind");
        drop(block);
        let again = PortBlock::reserve().expect("another block");
        assert_ne!(again.first, first);
    }
}
