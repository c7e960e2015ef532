//! The API's durable, sequenced event log.

use rusqlite::{OptionalExtension, Row};

use crate::err::{Error, Result, SqlResultExt};
use crate::model::{Event, UnixMillis};
use crate::store::{Db, WriteTx, get_opt_u64, get_u64, to_sql_int};

pub(crate) const SELECT_SINCE: &str =
    "SELECT seq, at, kind, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// AUTOINCREMENT's high-water mark survives deleting every row.
pub(crate) const SELECT_LAST_SEQ: &str = "SELECT seq FROM sqlite_sequence WHERE name = 'events'";

/// The oldest event whose kind is not in the JSON array ?1 (the churn kinds).
pub(crate) const SELECT_OLDEST_SEQ: &str = "SELECT min(seq) FROM events \
     WHERE kind NOT IN (SELECT value FROM json_each(?1))";

/// Among events whose kind is (?3 = 1) or is not (?3 = 0) in the JSON array ?2: the
/// (keep + 1)-th newest and everything older go; with fewer the subquery is NULL and nothing
/// matches.
pub(crate) const PRUNE: &str = "DELETE FROM events \
     WHERE (kind IN (SELECT value FROM json_each(?2))) = ?3 AND seq <= \
     (SELECT seq FROM events WHERE (kind IN (SELECT value FROM json_each(?2))) = ?3 \
      ORDER BY seq DESC LIMIT 1 OFFSET ?1)";

/// `kinds` as the JSON array the queries above take. Kinds are plain identifiers
/// (`frontend.attached`); quotes and backslashes are escaped all the same.
fn kinds_json(kinds: &[&str]) -> String {
    let quoted: Vec<String> = kinds
        .iter()
        .map(|k| format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(","))
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        seq: get_u64(row, 0)?,
        at: get_u64(row, 1)?,
        kind: row.get(2)?,
        data: row.get(3)?,
    })
}

pub(crate) fn since(db: Db<'_>, after_seq: u64, limit: u32) -> Result<Vec<Event>> {
    // Sequence numbers above i64::MAX cannot exist; asking for them yields nothing.
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    db.conn
        .prepare_cached(SELECT_SINCE)
        .and_then(|mut stmt| {
            stmt.query_map(rusqlite::params![after, limit], from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .at(db.path)
}

pub(crate) fn last_seq(db: Db<'_>) -> Result<u64> {
    let seq: Option<u64> = db
        .conn
        .prepare_cached(SELECT_LAST_SEQ)
        .and_then(|mut stmt| stmt.query_row([], |row| get_u64(row, 0)).optional())
        .at(db.path)?;
    Ok(seq.unwrap_or(0))
}

pub(crate) fn oldest_seq(db: Db<'_>, churn: &[&str]) -> Result<Option<u64>> {
    db.conn
        .prepare_cached(SELECT_OLDEST_SEQ)
        .and_then(|mut stmt| stmt.query_row([kinds_json(churn)], |row| get_opt_u64(row, 0)))
        .at(db.path)
}

impl WriteTx<'_> {
    /// Appends an event and returns its sequence number, greater than any before. `data`
    /// must be valid JSON text.
    pub fn append_event(&self, kind: &str, data_json: &str, at: UnixMillis) -> Result<u64> {
        let db = self.db();
        if kind.is_empty() {
            return Err(Error::Invalid {
                what: "event kind",
                reason: "it is empty".to_owned(),
            });
        }
        let at = to_sql_int(at, "at")?;
        let seq = db
            .conn
            .prepare_cached("INSERT INTO events (at, kind, data) VALUES (?1, ?2, ?3)")
            .and_then(|mut stmt| stmt.insert(rusqlite::params![at, kind, data_json]))
            .at(db.path)
            .map_err(|e| match e {
                Error::Invalid { .. } => Error::Invalid {
                    what: "event data",
                    reason: "it is not valid JSON".to_owned(),
                },
                other => other,
            })?;
        // Row ids from AUTOINCREMENT start at 1 and only grow.
        u64::try_from(seq).map_err(|_| Error::DatabaseCorrupt {
            path: db.path.to_owned(),
            reason: "the event sequence is negative".to_owned(),
        })
    }

    /// Deletes all but the `keep_newest` newest events, not counting the `churn` kinds, and
    /// all but the `keep_churn` newest of those; returns how many were deleted. The sequence
    /// continues from where it was.
    ///
    /// Churn kinds (frontends attaching and detaching) are counted apart so that however
    /// many of them there are, they never push other events out of retention.
    pub fn prune_events(&self, keep_newest: u64, churn: &[&str], keep_churn: u64) -> Result<u64> {
        let db = self.db();
        let kinds = kinds_json(churn);
        let mut removed = 0;
        for (keep, is_churn) in [(keep_newest, false), (keep_churn, true)] {
            let keep = i64::try_from(keep).unwrap_or(i64::MAX);
            removed += db
                .conn
                .prepare_cached(PRUNE)
                .and_then(|mut stmt| stmt.execute(rusqlite::params![keep, kinds, is_churn]))
                .at(db.path)?;
        }
        Ok(removed as u64)
    }
}
