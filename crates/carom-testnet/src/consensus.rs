//! Reading a directory authority's cached consensus to decide when the network is usable.

use std::collections::BTreeMap;
use std::path::Path;

/// The parts of a microdescriptor consensus that readiness depends on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ConsensusSummary {
    /// `valid-after` line, as written.
    pub(crate) valid_after: String,
    /// Consensus parameters (`params` line).
    pub(crate) params: BTreeMap<String, String>,
    /// Relay nickname → its flags.
    pub(crate) relays: BTreeMap<String, Vec<String>>,
}

impl ConsensusSummary {
    /// Parse the text of a `cached-microdesc-consensus` file.
    pub(crate) fn parse(text: &str) -> ConsensusSummary {
        let mut summary = ConsensusSummary::default();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("valid-after") => summary.valid_after = words.collect::<Vec<_>>().join(" "),
                Some("params") => {
                    summary.params = words
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                }
                Some("r") => {
                    current = words.next().map(str::to_owned);
                    if let Some(nick) = &current {
                        summary.relays.insert(nick.clone(), Vec::new());
                    }
                }
                Some("s") => {
                    if let Some(nick) = &current {
                        summary
                            .relays
                            .insert(nick.clone(), words.map(str::to_owned).collect());
                    }
                }
                _ => {}
            }
        }
        summary
    }

    /// Read and parse the consensus an authority has cached, if it has one yet.
    pub(crate) fn read(data_dir: &Path) -> Option<ConsensusSummary> {
        std::fs::read_to_string(data_dir.join("cached-microdesc-consensus"))
            .ok()
            .map(|text| ConsensusSummary::parse(&text))
    }

    /// What is still missing before clients can use this consensus, or `None` if nothing.
    pub(crate) fn missing(&self, nicknames: &[&str], flags: &[&str]) -> Option<String> {
        let mut problems = Vec::new();
        for nick in nicknames {
            match self.relays.get(*nick) {
                None => problems.push(format!("{nick} is not listed")),
                Some(have) => {
                    let lacking: Vec<&str> = flags
                        .iter()
                        .copied()
                        .filter(|f| !have.iter().any(|h| h == f))
                        .collect();
                    if !lacking.is_empty() {
                        problems.push(format!("{nick} lacks {}", lacking.join(",")));
                    }
                }
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "network-status-version 3 microdesc\n\
        valid-after 2026-11-23 13:40:00\n\
        params guard-min-filtered-sample-size=5 hsdir_interval=8\n\
        r auth0 AAAA 2026-11-23 13:39:50 127.0.0.1 20000 20001\n\
        m sha256=xyz\n\
        s Exit Fast Guard HSDir Running Stable V2Dir Valid\n\
        r relay0 BBBB 2026-11-23 13:39:51 127.0.0.1 20006 20007\n\
        m sha256=abc\n\
        s Fast Running Valid\n";

    #[test]
    fn parses_relays_flags_and_params() {
        let s = ConsensusSummary::parse(SAMPLE);
        assert_eq!(s.valid_after, "2026-11-23 13:40:00");
        assert_eq!(
            s.params.get("hsdir_interval").map(String::as_str),
            Some("8")
        );
        assert_eq!(s.relays.len(), 2);
        assert!(s.relays["auth0"].contains(&"HSDir".to_owned()));
    }

    #[test]
    fn reports_missing_relays_and_flags() {
        let s = ConsensusSummary::parse(SAMPLE);
        assert_eq!(s.missing(&["auth0"], &["Running", "HSDir"]), None);
        assert_eq!(
            s.missing(&["auth0", "relay0", "relay1"], &["Running", "HSDir"])
                .as_deref(),
            Some("relay0 lacks HSDir; relay1 is not listed")
        );
    }
}
