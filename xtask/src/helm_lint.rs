//! `helm lint` without the `helm` binary: through the PyPI package `helm-sdkpy`, which
//! bundles Helm's Go library and whose `Lint` action runs offline. It renders every template
//! (in lint mode, where `required` only warns) and checks that each renders to well-formed
//! Kubernetes YAML.
//!
//! Its `Lint` takes a chart directory and no values files, so each values file is linted by
//! copying the chart to a temporary directory with that file merged over the defaults as
//! `values.yaml`, which is what `helm lint -f FILE` does.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_yaml_ng::Value as Yaml;

/// Prints the lint result as JSON; the chart directory is the first argument.
const SCRIPT: &str = "import asyncio, json, sys, helm_sdkpy
cfg = helm_sdkpy.Configuration(namespace='default')
print(json.dumps(asyncio.run(helm_sdkpy.Lint(cfg).run(sys.argv[1]))))";

/// Whether `python3` can import `helm_sdkpy`.
pub fn available() -> bool {
    Command::new("python3")
        .args(["-c", "import helm_sdkpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Lints `chart` with `overrides` (a values file's YAML) merged over its `values.yaml`;
/// answers the warnings Helm gave, as the files they concern (e.g. the chart directory for
/// a declared dependency missing from `charts/`).
pub fn lint(chart: &Path, overrides: &Yaml) -> anyhow::Result<Vec<String>> {
    let dir = tempfile::tempdir().context("creating a temporary chart directory")?;
    let copy = dir.path().join("ccm");
    copy_dir(chart, &copy)?;
    let defaults: Yaml =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml"))?)?;
    let mut values = defaults;
    merge(&mut values, overrides);
    std::fs::write(copy.join("values.yaml"), serde_yaml_ng::to_string(&values)?)?;

    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&copy)
        .output()
        .context("running python3 with helm_sdkpy")?;
    if !out.status.success() {
        bail!(
            "helm_sdkpy lint did not run:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("helm_sdkpy printed no JSON")?;
    // Helm's severities: 1 info, 2 warning, 3 error. The library serialises a Go error as
    // `{}`, so only the file is known; `helm lint` itself prints the reason.
    let errors: Vec<String> = result["Messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["Severity"].as_u64().unwrap_or(0) >= 3)
        .map(|m| m["Path"].as_str().unwrap_or("?").to_owned())
        .collect();
    if !errors.is_empty() {
        bail!("helm lint reports errors in: {}", errors.join(", "));
    }
    // The copy's path means nothing to the reader: name files relative to the chart.
    let prefix = format!("{}/", copy.display());
    Ok(result["Messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["Severity"].as_u64() == Some(2))
        .map(|m| {
            let path = m["Path"].as_str().unwrap_or("?");
            match path.strip_prefix(&prefix) {
                Some(rest) => rest.to_owned(),
                None if path == copy.display().to_string() => "(the chart)".to_owned(),
                None => path.to_owned(),
            }
        })
        .collect())
}

/// Deep-merges `over` into `base`, as Helm merges a values file over the chart's defaults.
pub fn merge(base: &mut Yaml, over: &Yaml) {
    match (base, over) {
        (Yaml::Mapping(base), Yaml::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_defaults_and_replaces_leaves_and_lists() {
        let mut base: Yaml =
            serde_yaml_ng::from_str("a: {x: 1, y: 2}\nlist: [1, 2]\nkeep: k").unwrap();
        let over: Yaml = serde_yaml_ng::from_str("a: {y: 3, z: 4}\nlist: [9]").unwrap();
        merge(&mut base, &over);
        let want: Yaml =
            serde_yaml_ng::from_str("a: {x: 1, y: 3, z: 4}\nlist: [9]\nkeep: k").unwrap();
        assert_eq!(base, want);
    }
}
