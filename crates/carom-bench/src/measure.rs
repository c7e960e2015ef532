//! Small measuring tools: percentiles, process CPU time and memory, result rows.

use std::time::Duration;

use serde::Serialize;

/// The `q` quantile (0..=1) of `samples` (sorted here), nearest-rank.
pub(crate) fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let last = samples.len() - 1;
    // Nearest rank without float-to-int casts: the first index whose rank reaches q·last.
    let target = q.clamp(0.0, 1.0) * last as f64;
    let index = (0..=last)
        .find(|&i| i as f64 + 0.5 > target)
        .unwrap_or(last);
    samples[index]
}

/// CPU time (user + system) this process has used.
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports clock ticks; USER_HZ is 100 on every mainstream configuration.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Resident memory of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Summed resident memory of `pid`'s child processes named `program`, in MiB.
pub(crate) fn children_rss_mib(pid: u32, program: &str) -> f64 {
    carom_testnet::children_named(pid, program)
        .into_iter()
        .map(rss_mib)
        .sum()
}

/// One line of the results table.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    /// What was measured.
    pub(crate) name: String,
    /// The figure.
    pub(crate) value: f64,
    /// Its unit.
    pub(crate) unit: &'static str,
    /// The target it is held against, in words, if any.
    pub(crate) target: Option<String>,
    /// Whether the target was met (when there is one).
    pub(crate) met: Option<bool>,
    /// How it relates to the limit (e.g. "1.07 × raw echo RTT").
    pub(crate) note: String,
}

/// All results of a run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
}

impl Report {
    pub(crate) fn add(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            name: name.into(),
            value,
            unit,
            target: None,
            met: None,
            note: note.into(),
        });
    }

    /// A figure with a target: `met` says whether it holds.
    pub(crate) fn target(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        target: String,
        met: bool,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            name: name.into(),
            value,
            unit,
            target: Some(target),
            met: Some(met),
            note: note.into(),
        });
    }

    /// The table people read.
    pub(crate) fn table(&self) -> String {
        let mut out = String::from(
            "| measurement | value | target | met | relation |\n| --- | ---: | --- | :---: | --- |\n",
        );
        for r in &self.rows {
            let value = if r.value >= 100.0 {
                format!("{:.0} {}", r.value, r.unit)
            } else {
                format!("{:.2} {}", r.value, r.unit)
            };
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.name,
                value,
                r.target.as_deref().unwrap_or(""),
                met,
                r.note
            ));
        }
        out
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&mut v, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&mut v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&mut v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&mut [], 0.5), Duration::ZERO);
    }

    #[test]
    fn this_process_has_memory_and_a_cpu_clock() {
        assert!(rss_mib(std::process::id()) > 0.0);
        let before = cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time() >= before);
    }
}
