//! The chart and the compose file name the images `cargo xtask images` builds: a renamed or
//! re-versioned image must not leave either pointing at a tag nothing builds.

#[cfg(test)]
mod tests {
    use ccm_tests::images::{CCM, NATS, POSTGRES};
    use serde_yaml_ng::Value;

    fn yaml(path: &str) -> Value {
        let path = crate::up::workspace_root().join(path);
        let text = std::fs::read_to_string(&path).expect("readable");
        serde_yaml_ng::from_str(&text).expect("YAML")
    }

    fn images(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Mapping(map) => {
                for (key, value) in map {
                    match (key.as_str(), value.as_str()) {
                        (Some("image"), Some(image)) => found.push(image.to_owned()),
                        _ => images(value, found),
                    }
                }
            }
            Value::Sequence(items) => items.iter().for_each(|v| images(v, found)),
            _ => {}
        }
    }

    #[test]
    fn the_chart_deploys_the_ccm_image_that_is_built() {
        let chart = yaml("helm/ccm/Chart.yaml");
        assert_eq!(
            chart["appVersion"].as_str(),
            Some(CCM.tag),
            "Chart.yaml appVersion"
        );
        let values = yaml("helm/ccm/values.yaml");
        assert_eq!(values["image"]["repository"].as_str(), Some(CCM.name));
        // An empty tag means appVersion, checked above.
        assert_eq!(values["image"]["tag"].as_str(), Some(""));
    }

    #[test]
    fn the_compose_file_runs_only_images_that_are_built() {
        let mut found = Vec::new();
        images(&yaml("deploy/compose.yaml"), &mut found);
        let built = [CCM.reference(), NATS.reference(), POSTGRES.reference()];
        assert!(!found.is_empty());
        for image in &found {
            assert!(built.contains(image), "{image} is not one of {built:?}");
        }
        for image in &built {
            assert!(found.contains(image), "{image} is not in the compose file");
        }
    }
}
