//! The profile's identity record and the settings table.

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

pub(crate) fn setting(db: Db<'_>, key: &str) -> Result<Option<String>> {
    db.conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")
        .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
        .at(db.path)
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

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let db = self.db();
        db.conn
            .prepare_cached(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut stmt| stmt.execute([key, value]))
            .at(db.path)?;
        Ok(())
    }

    /// Removes a setting; returns whether it existed.
    pub fn remove_setting(&self, key: &str) -> Result<bool> {
        let db = self.db();
        let removed = db
            .conn
            .execute("DELETE FROM settings WHERE key = ?1", [key])
            .at(db.path)?;
        Ok(removed > 0)
    }
}
