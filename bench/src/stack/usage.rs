//! What the processes of a phase use: CPU time and resident memory, from `/proc`.

use super::{Servers, Services};

/// Resident memory of a process, from `/proc/<pid>/status`: now and at its peak.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_mib: f64,
}

pub fn memory(pid: Option<u32>) -> Memory {
    let Some(pid) = pid else {
        return Memory::default();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    Memory {
        rss_mib: field("VmRSS:"),
        peak_mib: field("VmHWM:"),
    }
}

/// CPU time a process has used so far (user + system), in seconds; with `children`, also its
/// live child processes' and its exited children's (PostgreSQL works in one process per
/// connection). CPU time, unlike wall time, is what a phase costs whatever else shares the
/// cores, so it shows where the time goes.
pub fn cpu_seconds(pid: Option<u32>, children: bool) -> f64 {
    let Some(pid) = pid else {
        return 0.0;
    };
    // The kernel reports these in clock ticks of 1/100 s on Linux (USER_HZ).
    const TICKS: f64 = 100.0;
    let fields = |pid: u32| -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces; the fields after its closing parenthesis do not.
        let rest = &stat[stat.rfind(')')? + 2..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    };
    let ticks = |f: &[String], from: usize, to: usize| -> f64 {
        f[from..=to]
            .iter()
            .filter_map(|v| v.parse::<f64>().ok())
            .sum()
    };
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let Some(own) = fields(pid) else {
        return 0.0;
    };
    let mut total = ticks(&own, 11, if children { 14 } else { 12 });
    if children && let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(f) = fields(child)
                && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            {
                total += ticks(&f, 11, 12);
            }
        }
    }
    total / TICKS
}

/// CPU seconds of every process of a phase at one moment.
#[derive(Debug, Clone)]
pub struct Cpu(Vec<(&'static str, f64)>);

impl Cpu {
    pub fn now(servers: &Servers, services: &Services) -> Self {
        let mut all = vec![
            ("nats-server", cpu_seconds(servers.nats.pid(), false)),
            ("postgres", cpu_seconds(servers.pg.pid(), true)),
        ];
        for (name, guard) in &services.children {
            all.push((name, cpu_seconds(guard.pid(), false)));
        }
        Self(all)
    }

    /// CPU milliseconds each process spent per unit of work since `before`, and their sum.
    pub fn per_unit_ms(&self, before: &Cpu, units: usize) -> Vec<(&'static str, f64)> {
        let mut out: Vec<(&'static str, f64)> = self
            .0
            .iter()
            .map(|(name, after)| {
                let was = before
                    .0
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0.0, |c| c.1);
                (*name, (after - was) * 1e3 / units.max(1) as f64)
            })
            .collect();
        let total = out.iter().map(|c| c.1).sum();
        out.push(("total", total));
        out
    }
}

/// `name 0.123, name 0.456, …` for a figure's conditions.
pub fn cpu_text(per_unit: &[(&'static str, f64)]) -> String {
    per_unit
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}
