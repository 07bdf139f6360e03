//! The annotated example in config/ must stay a valid configuration.

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/pgherd.toml");
    let config = pgherd_config::Config::load(std::path::Path::new(path))
        .unwrap_or_else(|e| panic!("config/pgherd.toml: {e}"));
    assert_eq!(config.nodes.len(), 3);
    assert!(config.database("anything").is_some());
    assert!(config.users["app"].verifier.is_some());
}

/// The example is also the options reference: every `[pgherd]` setting must
/// be there, set or commented out, with its explanation above it.
#[test]
fn example_config_documents_every_setting() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/pgherd.toml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut missing = Vec::new();
    for setting in pgherd_config::SETTINGS {
        let key = setting.key;
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
        });
        if !documented {
            missing.push(key);
        }
    }
    assert!(missing.is_empty(), "not in config/pgherd.toml: {missing:?}");
}
