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
