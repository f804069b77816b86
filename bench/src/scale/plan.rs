//! The pure parts of the scale phase: which configurations run, which processes each starts,
//! how samples add up per service, and the table of the report.

use std::fmt::Write as _;

use serde::Serialize;

/// Campaigns that receive the end-to-end calls; every other campaign stays idle.
pub const BUSY: usize = 10;

/// Replicas of every service but the dialer.
pub const OTHER_REPLICAS: usize = 2;

/// One configuration: this many running campaigns and dialer replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Config {
    pub campaigns: usize,
    pub dialers: usize,
}

/// Every (campaigns, dialers) pair, campaigns outermost so the run grows in size.
pub fn configurations(campaigns: &[usize], dialers: &[usize]) -> Vec<Config> {
    campaigns
        .iter()
        .flat_map(|&campaigns| {
            dialers
                .iter()
                .map(move |&dialers| Config { campaigns, dialers })
        })
        .filter(|c| c.campaigns > 0 && c.dialers > 0)
        .collect()
}

/// The processes of a configuration, in start order: the consumers of events first, ingest
/// last (the API answers once everything behind it runs).
pub fn processes(config: Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (name, n) in [
        ("ccm-projector", OTHER_REPLICAS),
        ("ccm-retrier", OTHER_REPLICAS),
        ("ccm-dialer", config.dialers),
        ("ccm-ingest", OTHER_REPLICAS),
    ] {
        out.extend(std::iter::repeat_n(name, n));
    }
    out
}

/// How many of `campaigns` are busy.
pub fn busy(campaigns: usize) -> usize {
    BUSY.min(campaigns)
}

/// `count` indices into the idle campaigns `busy..campaigns`, spread evenly over them and
/// repeating when there are fewer idle campaigns than calls. With no idle campaign (a single
/// campaign), the busy ones serve: the first calls run before any load.
pub fn spread(campaigns: usize, busy: usize, count: usize) -> Vec<usize> {
    let (from, n) = if campaigns > busy {
        (busy, campaigns - busy)
    } else {
        (0, campaigns)
    };
    if n == 0 {
        return Vec::new();
    }
    (0..count)
        .map(|i| from + if count <= n { i * n / count } else { i % n })
        .collect()
}

/// The nearest-rank percentile `q` (0..=1) of `sorted` values; `None` when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// One process measured over the quiet window.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// `nats-server n1`, `ccm-dialer`, …
    pub kind: String,
    /// Share of one core, percent.
    pub cpu_pct: f64,
    pub rss_mib: f64,
}

/// The sum of `samples` of one kind; `None` when no process is of that kind.
pub fn sum_of(samples: &[Sample], kind: &str, value: fn(&Sample) -> f64) -> Option<f64> {
    let mut matched = samples.iter().filter(|s| s.kind == kind).peekable();
    matched.peek()?;
    Some(matched.map(value).sum())
}

/// What one configuration measured. A figure that could not be measured is `None`, and its
/// cell stays empty.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub config: Config,
    /// Campaigns created per second through the API (bounded concurrency).
    pub created_per_s: Option<f64>,
    /// 503 answers to creations, each retried.
    pub create_retries: Option<usize>,
    /// Share of one core of each nats-server node, in node order.
    pub nats_cpu: Vec<f64>,
    /// Every process over the quiet window.
    pub samples: Vec<Sample>,
    pub window_s: f64,
    pub first_call_p50_ms: Option<f64>,
    pub first_call_p99_ms: Option<f64>,
    pub first_calls: usize,
    pub calls_per_s: Option<f64>,
    /// Calls queued for the throughput and not ended before its timeout.
    pub not_ended: Option<usize>,
    /// Attempts with more than one `Dialing` event.
    pub dialed_twice: Option<usize>,
    /// Why the configuration stopped early, if it did.
    pub error: Option<String>,
}

impl Row {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            created_per_s: None,
            create_retries: None,
            nats_cpu: Vec::new(),
            samples: Vec::new(),
            window_s: 0.0,
            first_call_p50_ms: None,
            first_call_p99_ms: None,
            first_calls: 0,
            calls_per_s: None,
            not_ended: None,
            dialed_twice: None,
            error: None,
        }
    }

    fn cpu(&self, kind: &str) -> Option<f64> {
        sum_of(&self.samples, kind, |s| s.cpu_pct)
    }

    fn rss(&self, kind: &str) -> Option<f64> {
        sum_of(&self.samples, kind, |s| s.rss_mib)
    }

    fn cells(&self) -> Vec<String> {
        let f = |v: Option<f64>, decimals: usize| {
            v.map_or_else(String::new, |v| format!("{v:.decimals$}"))
        };
        let nats_total = (!self.nats_cpu.is_empty()).then(|| self.nats_cpu.iter().sum());
        let nodes = self
            .nats_cpu
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join("/");
        let others = ["ccm-ingest", "ccm-retrier", "ccm-projector"]
            .iter()
            .filter_map(|k| self.rss(k))
            .reduce(|a, b| a + b);
        vec![
            self.config.campaigns.to_string(),
            self.config.dialers.to_string(),
            f(self.created_per_s, 1),
            self.create_retries
                .map_or_else(String::new, |n| n.to_string()),
            nodes,
            f(nats_total, 1),
            f(self.cpu("ccm-dialer"), 1),
            f(self.cpu("ccm-ingest"), 1),
            f(self.cpu("ccm-retrier"), 1),
            f(self.cpu("ccm-projector"), 1),
            f(self.cpu("postgres"), 1),
            f(self.first_call_p50_ms, 0),
            f(self.first_call_p99_ms, 0),
            f(self.calls_per_s, 0),
            self.not_ended.map_or_else(String::new, |n| n.to_string()),
            self.dialed_twice
                .map_or_else(String::new, |n| n.to_string()),
            f(self.rss("nats-server"), 0),
            f(self.rss("ccm-dialer"), 0),
            f(others, 0),
        ]
    }
}

const HEADER: [&str; 19] = [
    "campaigns",
    "dialers",
    "created/s",
    "503s",
    "nats % n1/n2/n3",
    "nats %",
    "dialer %",
    "ingest %",
    "retrier %",
    "projector %",
    "postgres %",
    "1st p50 ms",
    "1st p99 ms",
    "calls/s",
    "not ended",
    "dialed 2x",
    "nats MiB",
    "dialer MiB",
    "others MiB",
];

/// The scale table: one line per configuration, CPU as a share of one core summed over the
/// replicas of each service, memory as resident MiB summed likewise. Empty cells were not
/// measured.
pub fn table(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut out, &HEADER);
    for (row, cells) in rows.iter().zip(&cells) {
        line(
            &mut out,
            &cells.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        if let Some(error) = &row.error {
            let _ = writeln!(out, "  ^ stopped early: {error}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_are_every_pair_campaigns_outermost() {
        let got = configurations(&[1, 100], &[1, 3]);
        let pairs: Vec<(usize, usize)> = got.iter().map(|c| (c.campaigns, c.dialers)).collect();
        assert_eq!(pairs, [(1, 1), (1, 3), (100, 1), (100, 3)]);
        assert!(configurations(&[0, 5], &[0]).is_empty());
    }

    #[test]
    fn every_service_runs_twice_and_the_dialer_as_configured() {
        let names = processes(Config {
            campaigns: 1,
            dialers: 3,
        });
        let count = |n: &str| names.iter().filter(|x| **x == n).count();
        assert_eq!(count("ccm-dialer"), 3);
        for other in ["ccm-ingest", "ccm-retrier", "ccm-projector"] {
            assert_eq!(count(other), OTHER_REPLICAS, "{other}");
        }
        assert_eq!(names.last(), Some(&"ccm-ingest"));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn first_calls_go_to_idle_campaigns_spread_over_them() {
        // Seeded sweep over sizes: every index idle, in range, and as many distinct as can be.
        let mut seed: u64 = 0x5ca1e;
        println!("seed {seed:#x}");
        for _ in 0..500 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let campaigns = 1 + (seed >> 33) as usize % 6000;
            let count = 1 + (seed >> 13) as usize % 200;
            let b = busy(campaigns);
            let picked = spread(campaigns, b, count);
            assert_eq!(picked.len(), count);
            let idle = campaigns - b;
            for &i in &picked {
                assert!(i < campaigns);
                if idle > 0 {
                    assert!(i >= b, "{i} is busy ({campaigns} campaigns)");
                }
            }
            let distinct: std::collections::BTreeSet<_> = picked.iter().collect();
            let available = if idle > 0 { idle } else { campaigns };
            assert_eq!(distinct.len(), count.min(available), "{campaigns} {count}");
        }
    }

    #[test]
    fn the_table_sums_replicas_and_leaves_unmeasured_cells_empty() {
        let mut row = Row::new(Config {
            campaigns: 100,
            dialers: 3,
        });
        row.nats_cpu = vec![1.0, 2.0, 3.5];
        let sample = |kind: &str, cpu_pct, rss_mib| Sample {
            kind: kind.into(),
            cpu_pct,
            rss_mib,
        };
        row.samples = vec![
            sample("ccm-dialer", 1.25, 20.0),
            sample("ccm-dialer", 1.25, 20.0),
            sample("ccm-dialer", 0.5, 20.0),
            sample("ccm-ingest", 0.1, 30.0),
            sample("nats-server", 0.0, 100.0),
        ];
        row.first_call_p99_ms = Some(12.4);
        let text = table(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let header: Vec<&str> = lines[0]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(header, HEADER);
        // Right-aligned columns: a cell spans from the end of the previous header to the end
        // of its own.
        let mut ends = Vec::new();
        for h in HEADER {
            let from = ends.last().copied().unwrap_or(0);
            ends.push(from + lines[0][from..].find(h).unwrap() + h.len());
        }
        let cell = |name: &str| {
            let j = HEADER.iter().position(|h| *h == name).unwrap();
            let start = if j == 0 { 0 } else { ends[j - 1] };
            lines[1].get(start..ends[j]).unwrap_or("").trim().to_owned()
        };
        assert_eq!(cell("nats % n1/n2/n3"), "1.0/2.0/3.5");
        assert_eq!(cell("nats %"), "6.5");
        assert_eq!(cell("dialer %"), "3.0");
        assert_eq!(cell("dialer MiB"), "60");
        assert_eq!(cell("others MiB"), "30");
        assert_eq!(cell("1st p99 ms"), "12");
        assert_eq!(cell("calls/s"), "");
        assert_eq!(cell("retrier %"), "");
        assert_eq!(cell("created/s"), "");
    }
}
