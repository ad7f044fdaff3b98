//! What the benches share: percentiles, a Markdown summary table, the machine's load and memory,
//! and writing a result file to `benches/results/<date>-<bench>-<mode>.md`.

use std::time::Duration;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// `/proc/loadavg`'s three load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The node's used memory (MemTotal − MemAvailable), MiB.
pub fn used_mib() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> f64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    field("MemTotal:") - field("MemAvailable:")
}

/// zram0's `mm_stat`: (orig_data_size, compr_data_size, mem_used_total), MiB.
pub fn zram() -> (f64, f64, f64) {
    let s = std::fs::read_to_string("/sys/block/zram0/mm_stat").unwrap_or_default();
    let v: Vec<f64> = s
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0) / 1048576.0)
        .collect();
    (
        v.first().copied().unwrap_or(0.0),
        v.get(1).copied().unwrap_or(0.0),
        v.get(2).copied().unwrap_or(0.0),
    )
}

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// "| n | median | p99 | max | min |" for a set of durations.
pub fn summary_row(label: &str, runs: &[Duration]) -> String {
    let mut s = runs.to_vec();
    s.sort();
    format!(
        "| {label} | {} | {} | {} | {} | {} |\n",
        s.len(),
        ms(pct(&s, 0.5)),
        ms(pct(&s, 0.99)),
        ms(*s.last().unwrap_or(&Duration::ZERO)),
        ms(*s.first().unwrap_or(&Duration::ZERO)),
    )
}

pub const SUMMARY_HEAD: &str =
    "| figure | runs | median | p99 | max | min |\n|---|---|---|---|---|---|\n";

pub fn date() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into())
}

pub fn write_result(bench: &str, mode: &str, report: &str) {
    print!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).expect("results dir");
    let path = dir.join(format!("{}-{bench}-{mode}.md", date()));
    std::fs::write(&path, report).expect("write results");
    eprintln!("{bench} bench: wrote {}", path.display());
}
