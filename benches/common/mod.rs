//! What the benchmark binaries share. (A folder with `mod.rs`, so Cargo does not take it for a
//! benchmark of its own.)

/// `name` parsed from the environment, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
