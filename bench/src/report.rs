//! The figures of one run: printed as a table and written as JSON.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Short name, e.g. `api.single.rate`.
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// How it was measured: load, sizes, what ran beside it.
    pub conditions: String,
    /// The raw limit it is compared with, measured in the same run.
    pub raw_limit: Option<String>,
    /// `value / raw limit`.
    pub ratio: Option<f64>,
    /// The target from the performance issue, as text (`>= 10000`, `<= 10`).
    pub target: Option<Target>,
}

/// A target a figure should reach.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Self::AtLeast(t) => value >= t,
            Self::AtMost(t) => value <= t,
        }
    }

    fn text(self) -> String {
        match self {
            Self::AtLeast(t) => format!(">= {}", human(t)),
            Self::AtMost(t) => format!("<= {}", human(t)),
        }
    }
}

impl Figure {
    pub fn new(name: &str, value: f64, unit: &'static str, conditions: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            value,
            unit,
            conditions: conditions.into(),
            raw_limit: None,
            ratio: None,
            target: None,
        }
    }

    /// Compares this figure with a raw limit figure of the same run.
    pub fn against(mut self, raw: Option<&Figure>) -> Self {
        if let Some(raw) = raw.filter(|r| r.value > 0.0) {
            self.raw_limit = Some(raw.name.clone());
            self.ratio = Some(self.value / raw.value);
        }
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub started_at: String,
    pub mode: String,
    pub machine: Machine,
    pub raw: Vec<Figure>,
    pub ccm: Vec<Figure>,
    /// Figures kept in the JSON and the comparison but not the table (CPU per process).
    pub detail: Vec<Figure>,
    /// The scale phase: one row per configuration.
    pub scale: Vec<crate::scale::Row>,
    /// Phases not run on purpose, with the reason (a server ccm does not support).
    pub skipped: Vec<(String, String)>,
    /// Phases that could not be measured, with the reason.
    pub failed: Vec<(String, String)>,
}

/// What the figures were measured on.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    /// ccm's version and commit.
    pub ccm: String,
    pub memory_gib: f64,
    pub nats_server: String,
    pub postgres: String,
    /// `/proc/loadavg` when the run started and ended (other work shares the cores).
    pub load_before: String,
    pub load_after: String,
}

/// The 1, 5 and 15 minute load averages now.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Report {
    pub fn raw(&self, name: &str) -> Option<&Figure> {
        self.raw.iter().find(|f| f.name == name)
    }

    /// Any figure of the run by name.
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.raw
            .iter()
            .chain(&self.ccm)
            .chain(&self.detail)
            .find(|f| f.name == name)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nccm benchmark ({}, {} mode, {} cores, {:.0} GiB, {}, {}, ccm {})\n",
            self.started_at,
            self.mode,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.nats_server,
            self.machine.postgres,
            self.machine.ccm
        );
        let rows: Vec<[String; 6]> = self
            .raw
            .iter()
            .chain(&self.ccm)
            .map(|f| {
                [
                    f.name.clone(),
                    format!("{} {}", human(f.value), f.unit),
                    f.ratio.map_or_else(String::new, |r| format!("{r:.2}")),
                    f.target.map_or_else(String::new, |t| {
                        format!(
                            "{} {}",
                            t.text(),
                            if t.met(f.value) { "met" } else { "MISSED" }
                        )
                    }),
                    f.raw_limit.clone().unwrap_or_default(),
                    f.conditions.clone(),
                ]
            })
            .collect();
        let header = [
            "figure",
            "value",
            "ratio",
            "target",
            "raw limit",
            "conditions",
        ];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row.iter()).take(5) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 6]| {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i < 5 {
                    let _ = write!(s, "{cell:<width$}  ", width = widths[i]);
                } else {
                    s.push_str(cell);
                }
            }
            s
        };
        let _ = writeln!(out, "{}", line(header));
        for row in &rows {
            let _ = writeln!(out, "{}", line(row.each_ref().map(String::as_str)));
        }
        if !self.scale.is_empty() {
            let _ = writeln!(
                out,
                "\nscale (CPU: % of one core over the quiet window, summed over replicas; \
                 memory: resident MiB, summed)\n{}",
                crate::scale::table(&self.scale)
            );
        }
        for (phase, reason) in &self.skipped {
            let _ = writeln!(out, "skipped {phase}: {reason}");
        }
        for (phase, reason) in &self.failed {
            let _ = writeln!(out, "NOT MEASURED {phase}: {reason}");
        }
        out
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// `12345.6` → `12,346`; small values keep decimals.
pub fn human(value: f64) -> String {
    if value.abs() >= 1000.0 {
        let whole = format!("{:.0}", value.abs());
        let mut grouped = String::new();
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if value < 0.0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_numbers_are_grouped_and_small_ones_keep_decimals() {
        assert_eq!(human(1_234_567.4), "1,234,567");
        assert_eq!(human(10_000.0), "10,000");
        assert_eq!(human(999.94), "999.9");
        assert_eq!(human(0.0291), "0.029");
    }

    #[test]
    fn a_figure_against_a_raw_limit_carries_the_ratio() {
        let raw = Figure::new("raw", 200.0, "msg/s", "");
        let f = Figure::new("f", 50.0, "msg/s", "").against(Some(&raw));
        assert_eq!(f.ratio, Some(0.25));
        assert_eq!(f.raw_limit.as_deref(), Some("raw"));
        assert!(Target::AtMost(10.0).met(9.9));
        assert!(!Target::AtLeast(10.0).met(9.9));
    }
}
