//! The Grafana dashboard shipped with the chart (`helm/ccm/dashboards/ccm.json`): it must be
//! JSON Grafana can load, and every metric its queries name must be one the code defines, so
//! a renamed metric cannot leave a panel silently empty.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// The crates whose sources define metrics.
const SOURCE_DIRS: &[&str] = &[
    "core/src",
    "ingest/src",
    "dialer/src",
    "retrier/src",
    "projector/src",
    "webhooks/src",
];

/// What Prometheus appends to a histogram's name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_count", "_sum"];

/// Checks the dashboard; returns how many panels and distinct metrics it has.
pub fn check(root: &Path) -> anyhow::Result<(usize, usize)> {
    let path = root.join("helm/ccm/dashboards/ccm.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let dashboard: Value = serde_json::from_str(&text).context("the dashboard is not JSON")?;
    let panels = panels(&dashboard)?;
    let mut queried = BTreeSet::new();
    for panel in &panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("panel {:?}: a target without expr", panel["title"]))?;
            queried.extend(metric_names(expr));
        }
    }
    if queried.is_empty() {
        bail!("the dashboard queries no ccm metric");
    }
    let defined = defined_metrics(root)?;
    let unknown: BTreeSet<&str> = queried
        .iter()
        .map(|name| base_name(name, &defined))
        .filter(|name| !defined.contains(*name))
        .collect();
    if !unknown.is_empty() {
        bail!("the dashboard queries metrics no Rust source defines: {unknown:?}");
    }
    Ok((panels.len(), queried.len()))
}

/// The non-row panels, after checking the dashboard's frame.
fn panels(dashboard: &Value) -> anyhow::Result<Vec<&Value>> {
    for key in ["title", "uid"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            bail!("the dashboard has no {key}");
        }
    }
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for panel in panels {
        let id = panel["id"]
            .as_u64()
            .context("a panel without a numeric id")?;
        if !ids.insert(id) {
            bail!("panel id {id} is used twice");
        }
        if panel["type"] != "row" {
            if panel["targets"].as_array().is_none_or(Vec::is_empty) {
                bail!("panel {:?} has no query", panel["title"]);
            }
            out.push(panel);
        }
    }
    Ok(out)
}

/// The `ccm_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("ccm_") {
        let preceded = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// A histogram's series name (`…_bucket`) stands for the histogram the code defines.
fn base_name<'a>(name: &'a str, defined: &BTreeSet<String>) -> &'a str {
    if defined.contains(name) {
        return name;
    }
    HISTOGRAM_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `"ccm_…"` string literal in the services' sources: where metrics are named.
fn defined_metrics(root: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut defined = BTreeSet::new();
    for dir in SOURCE_DIRS {
        for file in rust_files(&root.join(dir))? {
            let text = std::fs::read_to_string(&file)?;
            for literal in text.split('"').skip(1).step_by(2) {
                let is_name = literal.starts_with("ccm_")
                    && literal
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if is_name {
                    defined.insert(literal.to_owned());
                }
            }
        }
    }
    Ok(defined)
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_found_in_promql() {
        let expr = "histogram_quantile(0.99, sum by (le) (rate(ccm_a_seconds_bucket[5m]))) \
                    / max(ccm_b{campaign=~\"$campaign\"}) + xccm_not";
        assert_eq!(metric_names(expr), vec!["ccm_a_seconds_bucket", "ccm_b"]);
    }

    #[test]
    fn histogram_series_map_to_their_histogram() {
        let defined: BTreeSet<String> = ["ccm_a_seconds".to_owned()].into();
        assert_eq!(base_name("ccm_a_seconds_bucket", &defined), "ccm_a_seconds");
        assert_eq!(base_name("ccm_a_seconds", &defined), "ccm_a_seconds");
        assert_eq!(base_name("ccm_other_total", &defined), "ccm_other_total");
    }

    #[test]
    fn the_check_refuses_unknown_metrics_and_broken_json() {
        let root = tempfile::tempdir().expect("temp dir");
        let root = root.path();
        for dir in SOURCE_DIRS {
            std::fs::create_dir_all(root.join(dir)).expect("dir");
        }
        std::fs::write(
            root.join("core/src/m.rs"),
            r#"histogram!("ccm_known_seconds").record(1.0);"#,
        )
        .expect("source");
        std::fs::create_dir_all(root.join("helm/ccm/dashboards")).expect("dir");
        let write = |text: String| {
            std::fs::write(root.join("helm/ccm/dashboards/ccm.json"), text).expect("write")
        };
        let dashboard = |expr: &str| {
            serde_json::json!({"title": "t", "uid": "u", "panels": [
                {"id": 1, "type": "row", "title": "r"},
                {"id": 2, "type": "timeseries", "title": "p", "targets": [{"expr": expr}]}
            ]})
            .to_string()
        };

        write(dashboard("rate(ccm_known_seconds_bucket[5m])"));
        assert_eq!(check(root).expect("known metric"), (1, 1));
        write(dashboard(
            "sum(ccm_known_seconds_count) + ccm_unknown_total",
        ));
        let err = check(root).expect_err("unknown metric").to_string();
        assert!(
            err.contains("ccm_unknown_total") && !err.contains("ccm_known"),
            "{err}"
        );
        write("{\"title\": ".into());
        assert!(check(root).is_err(), "broken JSON");
    }
}
