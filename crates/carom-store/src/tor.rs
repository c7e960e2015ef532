//! Tor settings the user made through the API and the profile keeps: the bridge lines.
//!
//! Bridge lines are kept here, encrypted with the rest of the profile, rather than in
//! `caromd.toml`: a bridge line is a secret of sorts (it reveals an unlisted entry to Tor, and
//! that the user needs one), and one set from a frontend must survive a restart.

use rusqlite::OptionalExtension;

use crate::err::{Error, Result, SqlResultExt};
use crate::store::{Db, WriteTx};

pub(crate) fn bridges(db: Db<'_>) -> Result<Option<Vec<String>>> {
    let text: Option<String> = db
        .conn
        .prepare_cached("SELECT bridges FROM tor_settings WHERE id = 1")
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)).optional())
        .at(db.path)?
        .flatten();
    Ok(text.map(|t| t.lines().map(str::to_owned).collect()))
}

impl WriteTx<'_> {
    /// Keep these bridge lines (`Some(&[])`: explicitly none), or forget the profile's choice
    /// (`None`: the daemon's configuration decides again). A line may not hold a line break.
    pub fn set_tor_bridges(&self, lines: Option<&[String]>) -> Result<()> {
        let db = self.db();
        let text = match lines {
            Some(lines) => {
                if lines.iter().any(|l| l.contains(['\n', '\r'])) {
                    return Err(Error::Invalid {
                        what: "bridge line",
                        reason: "contains a line break".into(),
                    });
                }
                Some(lines.join("\n"))
            }
            None => None,
        };
        db.conn
            .prepare_cached(
                "INSERT INTO tor_settings (id, bridges) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET bridges = excluded.bridges",
            )
            .and_then(|mut stmt| stmt.execute([text]))
            .at(db.path)?;
        Ok(())
    }
}
