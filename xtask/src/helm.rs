//! `cargo xtask helm`: checks the Helm chart in `helm/ccm/` as far as this machine allows.
//!
//! Without a `helm` binary the templates cannot be rendered, so the checks are on the inputs:
//! `Chart.yaml` has the fields Helm requires, every values file conforms to
//! `values.schema.json` (what `helm install` would enforce), the `config` section of every
//! values file — with the settings the chart itself sets laid over it, as the ConfigMap
//! template does — is a configuration the services accept, and the retry policy shipped
//! with the chart is the repository's `config/retry.yaml` and parses, and the Grafana
//! dashboard is JSON whose metrics the code defines (`dashboard`). Where `helm` is on
//! `PATH`, `helm lint` and `helm template` also run with each values file; otherwise, where
//! the `helm-sdkpy` Python package is installed, Helm's own lint runs through it
//! (`helm_lint`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// The values files checked, relative to the chart.
const VALUES_FILES: &[&str] = &["values.yaml", "values-production.yaml"];

/// Values `helm lint`/`helm template` need with the default values file, which leaves the
/// secrets empty on purpose (the chart refuses to render without them).
const DEFAULT_SECRETS: &str =
    "secret.databaseUrl=postgres://ccm@postgres:5432/ccm,secret.authTokens=[lint-token]";
/// The bundled NATS chart switched on.
const BUNDLED_NATS: &str = "nats: {enabled: true}";
/// The same as a values file, for linting through helm-sdkpy.
const LINT_SECRETS: &str =
    "secret: {databaseUrl: 'postgres://ccm@postgres:5432/ccm', authTokens: '[lint-token]'}";

pub fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives inside the workspace")?
        .to_owned();
    let chart = root.join("helm/ccm");

    check_chart_yaml(&read(&chart.join("Chart.yaml"))?)?;
    println!("Chart.yaml: ok");

    let schema: Json = serde_json::from_str(&read(&chart.join("values.schema.json"))?)
        .context("values.schema.json is not JSON")?;
    for file in VALUES_FILES {
        let values = read(&chart.join(file))?;
        validate_values(&schema, &values).with_context(|| format!("helm/ccm/{file}"))?;
        check_service_config(&values).with_context(|| format!("helm/ccm/{file}"))?;
        println!("{file}: conforms to values.schema.json; its `config` is accepted by ccm");
    }

    let shipped = read(&chart.join("files/retry.yaml"))?;
    if shipped != read(&root.join("config/retry.yaml"))? {
        bail!("helm/ccm/files/retry.yaml differs from config/retry.yaml; copy it over");
    }
    ccm_core::RetryPolicy::parse(&shipped, Path::new("helm/ccm/files/retry.yaml"))?;
    println!("files/retry.yaml: same as config/retry.yaml, parses");

    let (panels, metrics) = crate::dashboard::check(&root)?;
    println!(
        "dashboards/ccm.json: {panels} panels over {metrics} metrics, all defined in the code"
    );

    if helm_installed() {
        return run_helm(&chart);
    }
    if !crate::helm_lint::available() {
        println!(
            "neither helm nor the helm-sdkpy Python package is installed: lint skipped \
             (pip install --ignore-requires-python helm-sdkpy cffi)"
        );
        return Ok(());
    }
    for file in VALUES_FILES {
        let mut values: Yaml = serde_yaml_ng::from_str(&read(&chart.join(file))?)?;
        if *file == "values.yaml" {
            crate::helm_lint::merge(&mut values, &serde_yaml_ng::from_str(LINT_SECRETS)?);
        }
        let warnings =
            crate::helm_lint::lint(&chart, &values).with_context(|| format!("helm/ccm/{file}"))?;
        println!(
            "helm lint (helm-sdkpy) with {file}: ok{}",
            warned(&warnings)
        );
    }
    // The bundled NATS chart switched on, though not downloaded (`charts/` is empty here):
    // the chart must still render, pointing the services at the release's NATS. Helm only
    // warns that the dependency is missing from `charts/`.
    let mut values: Yaml = serde_yaml_ng::from_str(&read(&chart.join("values.yaml"))?)?;
    crate::helm_lint::merge(&mut values, &serde_yaml_ng::from_str(LINT_SECRETS)?);
    crate::helm_lint::merge(&mut values, &serde_yaml_ng::from_str(BUNDLED_NATS)?);
    let warnings = crate::helm_lint::lint(&chart, &values)
        .context("helm/ccm/values.yaml with nats.enabled")?;
    println!(
        "helm lint (helm-sdkpy) with values.yaml and nats.enabled: ok{}",
        warned(&warnings)
    );
    Ok(())
}

/// Helm's warnings after an "ok": without `charts/nats-*.tgz` (`helm dependency update`)
/// there is one on the chart itself, the missing dependency.
fn warned(warnings: &[String]) -> String {
    if warnings.is_empty() {
        String::new()
    } else {
        format!(
            " ({} warning(s), in: {})",
            warnings.len(),
            warnings.join(", ")
        )
    }
}

fn helm_installed() -> bool {
    Command::new("helm").arg("version").output().is_ok()
}

/// Runs `helm lint` and `helm template` with each values file when `helm` is installed.
fn run_helm(chart: &Path) -> anyhow::Result<()> {
    // `helm template` (like `helm install`) refuses a chart whose dependencies are not in
    // `charts/`, even a disabled one: fetch the NATS chart first (needs the network).
    let fetched = std::fs::read_dir(chart.join("charts"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("nats"))
        })
        .unwrap_or(false);
    if !fetched {
        let out = Command::new("helm")
            .args(["dependency", "update"])
            .arg(chart)
            .output()
            .context("running helm dependency update")?;
        if !out.status.success() {
            bail!(
                "helm dependency update failed (the NATS chart is needed to render):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for file in VALUES_FILES {
        let values = chart.join(file);
        for action in ["lint", "template"] {
            let mut cmd = Command::new("helm");
            cmd.arg(action);
            if action == "template" {
                cmd.arg("ccm");
            }
            cmd.arg(chart).arg("--values").arg(&values);
            if *file == "values.yaml" {
                cmd.args(["--set", DEFAULT_SECRETS]);
            }
            let out = cmd
                .output()
                .with_context(|| format!("running helm {action}"))?;
            if !out.status.success() {
                bail!(
                    "helm {action} with {file} failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            println!("helm {action} with {file}: ok");
        }
    }
    Ok(())
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Checks that `Chart.yaml` has what Helm 3 requires of an application chart.
pub fn check_chart_yaml(text: &str) -> anyhow::Result<()> {
    let chart: Yaml = serde_yaml_ng::from_str(text).context("Chart.yaml is not YAML")?;
    let field = |name: &str| chart.get(name).and_then(Yaml::as_str);
    if field("apiVersion") != Some("v2") {
        bail!("Chart.yaml: apiVersion must be v2 (Helm 3)");
    }
    for name in ["name", "version", "appVersion", "description"] {
        if field(name).is_none_or(str::is_empty) {
            bail!("Chart.yaml: `{name}` is missing or not a string");
        }
    }
    let version = field("version").unwrap_or_default();
    let parts: Vec<&str> = version
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u64>().is_err()) {
        bail!("Chart.yaml: version `{version}` is not SemVer 2 (MAJOR.MINOR.PATCH)");
    }
    if !matches!(field("type"), None | Some("application")) {
        bail!("Chart.yaml: type must be `application`");
    }
    Ok(())
}

/// Validates a values file (YAML) against the chart's JSON schema, naming every offending
/// key by its path, e.g. `/ingest/replicas: "two" is not of type "integer"`.
pub fn validate_values(schema: &Json, values_yaml: &str) -> anyhow::Result<()> {
    let values: Json = serde_yaml_ng::from_str(values_yaml).context("not YAML")?;
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| anyhow::anyhow!("values.schema.json is not a valid schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&values)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if !errors.is_empty() {
        bail!(
            "does not conform to values.schema.json:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(())
}

/// Builds the configuration file the ConfigMap template renders from a values file (the
/// user's `config` with `nats_url`, `ingest.listen`, `retrier.policy_file` and the
/// metrics addresses of the dialer, retrier, projector and webhooks set by the chart) and checks that the services accept it:
/// `ccm_core::Config` refuses unknown keys and wrong types.
pub fn check_service_config(values_yaml: &str) -> anyhow::Result<()> {
    let values: Yaml = serde_yaml_ng::from_str(values_yaml).context("not YAML")?;
    let mut config = values
        .get("config")
        .cloned()
        .unwrap_or(Yaml::Mapping(Default::default()));
    let nats_url = values
        .get("nats")
        .and_then(|n| n.get("url"))
        .cloned()
        .unwrap_or(Yaml::String("nats://nats:4222".into()));
    let port = values
        .get("ingest")
        .and_then(|i| i.get("port"))
        .and_then(Yaml::as_u64)
        .unwrap_or(8000);
    set(&mut config, &["nats_url"], nats_url);
    set(
        &mut config,
        &["ingest", "listen"],
        Yaml::String(format!("0.0.0.0:{port}")),
    );
    set(
        &mut config,
        &["retrier", "policy_file"],
        Yaml::String("/etc/ccm/retry.yaml".into()),
    );
    for service in ["dialer", "retrier", "projector", "webhooks"] {
        let metrics = values.get(service).and_then(|p| p.get("metrics"));
        if metrics
            .and_then(|m| m.get("enabled"))
            .and_then(Yaml::as_bool)
            == Some(true)
        {
            let port = metrics
                .and_then(|m| m.get("port"))
                .and_then(Yaml::as_u64)
                .unwrap_or(9090);
            set(
                &mut config,
                &[service, "metrics_listen"],
                Yaml::String(format!("0.0.0.0:{port}")),
            );
        }
    }
    serde_yaml_ng::from_value::<ccm_core::Config>(config)
        .context("the rendered config.yaml is not a configuration ccm accepts")?;
    Ok(())
}

/// Sets `keys` in a YAML mapping tree, creating mappings on the way.
fn set(tree: &mut Yaml, keys: &[&str], value: Yaml) {
    let Some((first, rest)) = keys.split_first() else {
        *tree = value;
        return;
    };
    if !tree.is_mapping() {
        *tree = Yaml::Mapping(Default::default());
    }
    let Some(map) = tree.as_mapping_mut() else {
        return;
    };
    let slot = map
        .entry(Yaml::String((*first).into()))
        .or_insert(Yaml::Mapping(Default::default()));
    set(slot, rest, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart_file(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../helm/ccm")
            .join(name);
        std::fs::read_to_string(&path).unwrap()
    }

    fn schema() -> Json {
        serde_json::from_str(&chart_file("values.schema.json")).unwrap()
    }

    #[test]
    fn shipped_values_files_conform_and_give_a_valid_config() {
        check_chart_yaml(&chart_file("Chart.yaml")).unwrap();
        for file in VALUES_FILES {
            let values = chart_file(file);
            validate_values(&schema(), &values).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            check_service_config(&values).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        }
    }

    #[test]
    fn wrong_type_is_refused_with_its_path() {
        let values = chart_file("values.yaml").replace("  replicas: 2\n", "  replicas: two\n");
        let err = format!("{:#}", validate_values(&schema(), &values).unwrap_err());
        assert!(
            err.contains("/ingest/replicas") && err.contains("\"two\" is not of type \"integer\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_and_bad_enum_are_refused() {
        let values = chart_file("values.yaml")
            .replace("nats:\n", "natz: {}\nnats:\n")
            .replace("kind: sim", "kind: carrier-pigeon");
        let err = format!("{:#}", validate_values(&schema(), &values).unwrap_err());
        assert!(err.contains("natz"), "{err}");
        assert!(err.contains("/config/dialer/carrier/kind"), "{err}");
    }

    #[test]
    fn config_the_services_refuse_is_caught() {
        // The schema lets carrier settings through (they differ per kind); ccm does not.
        let values =
            chart_file("values.yaml").replace("kind: sim\n", "kind: sim\n      colour: blue\n");
        validate_values(&schema(), &values).unwrap();
        let err = format!("{:#}", check_service_config(&values).unwrap_err());
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn chart_yaml_needs_v2_and_semver() {
        let good = chart_file("Chart.yaml");
        check_chart_yaml(&good).unwrap();
        let v1 = good.replace("apiVersion: v2", "apiVersion: v1");
        assert!(
            check_chart_yaml(&v1)
                .unwrap_err()
                .to_string()
                .contains("v2")
        );
        let bad = good.replace("version: 0.1.0", "version: one");
        let err = check_chart_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("SemVer"), "{err}");
    }
}
