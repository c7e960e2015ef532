//! The benchmark harness, run at tiny sizes, so that every part of it keeps working. The
//! figures of a smoke run mean nothing; `docs/benchmarks.md` has real ones.

#[test]
fn every_benchmark_runs_at_smoke_size() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("bench.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_carom-bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(&out)
        .status()
        .expect("carom-bench runs");
    assert!(status.success(), "carom-bench --smoke failed");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("results written"))
            .expect("json");
    let names: Vec<&str> = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    for expected in [
        "in-process durable messages/s",
        "raw arti connect",
        "raw arti echo round trip",
        "first contact",
        "warm message",
        "cold message",
        "burst over one Tor session",
        "group send → delivered to all other members",
        "group burst",
        "caromd RSS in many groups",
        "caromd RSS, idle",
        "history page of 50",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(expected)),
            "no `{expected}` row in {names:#?}"
        );
    }
    for row in report["rows"].as_array().expect("rows") {
        let value = row["value"].as_f64().expect("a number");
        assert!(value.is_finite() && value > 0.0, "{row}");
    }
}
