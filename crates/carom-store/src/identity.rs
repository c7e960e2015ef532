//! The profile's identity record.

use rusqlite::OptionalExtension;
use zeroize::Zeroizing;

use crate::err::{Result, SqlResultExt};
use crate::model::IdentityRecord;
use crate::store::{Db, WriteTx, get_u64, to_sql_int};

pub(crate) fn get(db: Db<'_>) -> Result<Option<IdentityRecord>> {
    db.conn
        .query_row(
            "SELECT seed, device_secret, device_cert, created_at FROM identity WHERE id = 1",
            [],
            |row| {
                // Copied straight from SQLite's buffer into zeroising storage, with no
                // intermediate Vec left behind.
                let mut seed = Zeroizing::new([0u8; 32]);
                copy_secret(row.get_ref(0)?.as_blob()?, &mut seed[..], 0)?;
                let mut device_secret = Zeroizing::new([0u8; 32]);
                copy_secret(row.get_ref(1)?.as_blob()?, &mut device_secret[..], 1)?;
                Ok(IdentityRecord {
                    seed,
                    device_secret,
                    device_cert: row.get(2)?,
                    created_at: get_u64(row, 3)?,
                })
            },
        )
        .optional()
        .at(db.path)
}

fn copy_secret(stored: &[u8], out: &mut [u8], column: usize) -> rusqlite::Result<()> {
    if stored.len() != out.len() {
        return Err(rusqlite::Error::InvalidColumnType(
            column,
            "secret".to_owned(),
            rusqlite::types::Type::Blob,
        ));
    }
    out.copy_from_slice(stored);
    Ok(())
}

impl WriteTx<'_> {
    /// Saves this profile's identity, replacing any previous one (as when the device key is
    /// rotated).
    pub fn save_identity(&self, record: &IdentityRecord) -> Result<()> {
        let db = self.db();
        db.conn
            .execute(
                "INSERT INTO identity (id, seed, device_secret, device_cert, created_at)
                 VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET
                     seed = excluded.seed,
                     device_secret = excluded.device_secret,
                     device_cert = excluded.device_cert,
                     created_at = excluded.created_at",
                rusqlite::params![
                    &record.seed[..],
                    &record.device_secret[..],
                    record.device_cert,
                    to_sql_int(record.created_at, "created_at")?,
                ],
            )
            .at(db.path)?;
        Ok(())
    }
}
