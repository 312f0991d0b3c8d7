//! SIGHUP (`systemctl reload affectd`): re-read the config file the daemon was started with
//! and swap in the model and read-out it names, without dropping streams or tracks.
//!
//! Only `[model]` and `[readout]` reload (all their keys but `model.queue`). A change to any
//! other section is logged as needing a restart and ignored. On every reload the model is
//! rebuilt from its files even when the config did not change, since the point is usually a
//! new file at the same path (nightly training): weights digested, text embeddings computed,
//! heads read. That costs a few seconds off the encoder thread; the encoder only pauses to
//! re-encode the tracks' current windows with the new model. A config that does not
//! validate, a file that does not load, or a model the running one cannot hand over to
//! (another input size or window length) is logged and the running model is kept.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use toml::Table;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::encode::{self, EncoderSender};
use crate::model::ModelId;

/// Top-level sections that reload.
const RELOADABLE: [&str; 2] = ["model", "readout"];
/// Keys of `[model]` that are fixed at start (the encoder's input queue).
const MODEL_FIXED: [&str; 1] = ["queue"];
/// How long a reload waits for the encoder to take the new model.
const SWAP_TIMEOUT: Duration = Duration::from_secs(120);

/// The config file and what of it is applied.
pub struct Reloader {
    path: PathBuf,
    /// The file's content as parsed when last applied, minus the changes that were ignored.
    applied: Table,
}

impl Reloader {
    /// Remembers the file the daemon was started with, as it is now.
    pub fn new(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let applied = parse_table(&text, path)?;
        Ok(Self {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
            applied,
        })
    }

    /// Re-reads the file and swaps in its model and read-out; logs the outcome.
    pub async fn reload(&mut self, encoder: Option<&EncoderSender>) {
        let t0 = Instant::now();
        info!(config = %self.path.display(), "SIGHUP: reloading [model] and [readout]");
        match self.try_reload(encoder).await {
            Ok(Some(id)) => info!(
                model = %id.name,
                weights = %id.weights,
                took_ms = t0.elapsed().as_millis() as u64,
                "reloaded model {} {}",
                id.name,
                id.weights
            ),
            Ok(None) => {}
            Err(e) => error!("reload failed; the running model and read-out are kept: {e:#}"),
        }
    }

    async fn try_reload(
        &mut self,
        encoder: Option<&EncoderSender>,
    ) -> anyhow::Result<Option<ModelId>> {
        let path = self.path.clone();
        let (config, table) = tokio::task::spawn_blocking(move || read(&path))
            .await
            .context("config reading panicked")??;
        let ignored = needs_restart(&self.applied, &table);
        if !ignored.is_empty() {
            warn!(
                keys = ?ignored,
                "changed in the config file, but only [model] and [readout] reload: \
                 restart the service to apply these; ignored"
            );
        }
        let (encoder, model_cfg) = match (encoder, &config.model) {
            (Some(encoder), Some(model_cfg)) => (encoder.clone(), model_cfg.clone()),
            (None, None) => {
                info!("no [model] configured: nothing to reload");
                return Ok(None);
            }
            // Adding or removing the encoder stage is a restart (counted in `ignored`).
            _ => return Ok(None),
        };
        let readout_cfg = config.readout.clone();
        let loaded = {
            let model_cfg = model_cfg.clone();
            tokio::task::spawn_blocking(move || encode::load(&model_cfg, &readout_cfg))
                .await
                .context("model loading panicked")?
                .context("cannot load the new model")?
        };
        let reply = encoder.swap(loaded, super::stages::settings(&config, &model_cfg));
        let id = tokio::task::spawn_blocking(move || reply.wait(SWAP_TIMEOUT))
            .await
            .context("waiting for the encoder panicked")?
            .map_err(|e| anyhow!(e))?;
        self.applied = applied_after(&self.applied, &table);
        Ok(Some(id))
    }
}

/// Reads, validates and checks the files of the config at `path`, and parses it as a table.
fn read(path: &Path) -> anyhow::Result<(Config, Table)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = Config::from_text(&text, path)?;
    config.check_files()?;
    let table = parse_table(&text, path)?;
    Ok((config, table))
}

fn parse_table(text: &str, path: &Path) -> Result<Table, ConfigError> {
    toml::from_str::<Table>(text).map_err(|e| ConfigError::invalid(path.display().to_string(), e))
}

/// The keys whose change a reload cannot apply, sorted.
fn needs_restart(applied: &Table, new: &Table) -> Vec<String> {
    let keys: BTreeSet<&String> = applied.keys().chain(new.keys()).collect();
    let mut changed: Vec<String> = keys
        .into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()) && applied.get(*k) != new.get(*k))
        .cloned()
        .collect();
    match (applied.get("model"), new.get("model")) {
        (Some(old), Some(new)) => changed.extend(
            MODEL_FIXED
                .iter()
                .filter(|k| old.get(**k) != new.get(**k))
                .map(|k| format!("model.{k}")),
        ),
        (None, None) => {}
        // The encoder stage exists or not from the start.
        _ => changed.push("model".to_owned()),
    }
    changed
}

/// What is applied once `new` was reloaded: its `[model]` and `[readout]`, with the keys a
/// reload ignores left as they were (so later reloads still report them).
fn applied_after(applied: &Table, new: &Table) -> Table {
    let mut next = applied.clone();
    for key in RELOADABLE {
        match new.get(key) {
            Some(v) => next.insert(key.to_owned(), v.clone()),
            None => next.remove(key),
        };
    }
    if let (Some(toml::Value::Table(model)), Some(old)) =
        (next.get_mut("model"), applied.get("model"))
    {
        for k in MODEL_FIXED {
            match old.get(k) {
                Some(v) => model.insert(k.to_owned(), v.clone()),
                None => model.remove(k),
            };
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        parse_table(text, Path::new("t.toml")).unwrap()
    }

    const BASE: &str = r#"
[node]
id = "a"
[[camera]]
id = "c"
uri = "test:ball"
[model]
weights = "a.safetensors"
queue = 16
[readout]
ema_alpha = 0.5
"#;

    #[test]
    fn model_and_readout_changes_reload_the_rest_needs_a_restart() {
        let old = table(BASE);
        let new = table(
            &BASE
                .replace("a.safetensors", "b.safetensors")
                .replace("0.5", "0.7"),
        );
        assert!(needs_restart(&old, &new).is_empty());

        let new = table(
            &BASE
                .replace("test:ball", "test:smpte")
                .replace("queue = 16", "queue = 32")
                .replace("[readout]", "[mqtt]\nport = 1884\n[readout]"),
        );
        assert_eq!(needs_restart(&old, &new), ["camera", "mqtt", "model.queue"]);
        let without_model =
            table(&BASE.replace("[model]\nweights = \"a.safetensors\"\nqueue = 16\n", ""));
        assert_eq!(needs_restart(&old, &without_model), ["model"]);
    }

    #[test]
    fn ignored_changes_stay_reported_after_a_reload() {
        let old = table(BASE);
        let new = table(
            &BASE
                .replace("a.safetensors", "b.safetensors")
                .replace("queue = 16", "queue = 32")
                .replace("test:ball", "test:smpte"),
        );
        let applied = applied_after(&old, &new);
        assert_eq!(applied["model"]["weights"].as_str(), Some("b.safetensors"));
        assert_eq!(applied["model"]["queue"].as_integer(), Some(16));
        assert_eq!(needs_restart(&applied, &new), ["camera", "model.queue"]);
    }
}
