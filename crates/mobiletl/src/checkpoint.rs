//! Run directories with crash-safe checkpoints, shared by `mobiletl finetune` and
//! `moat train`.
//!
//! A run directory holds `state.json` and the checkpoint of the last completed epoch:
//! `<stem>.model.bpk` and `<stem>.optimizer.bpk`, burnpack records that keep parameter
//! ids, so the optimizer's moments line up with the loaded model. Every file is written
//! atomically and `state.json` (which names the current stem) last; the previous
//! checkpoint is deleted only after that, so an interrupted save leaves it current.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;

/// Writes `bytes` to `path` through a temporary file in the same folder (created if
/// needed), synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The files of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// The run directory `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The model record of checkpoint `stem`.
    pub fn model(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.model.bpk"))
    }

    /// The optimizer record of checkpoint `stem`.
    pub fn optimizer(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.optimizer.bpk"))
    }

    /// Whether the directory holds a run.
    pub fn exists(&self) -> bool {
        self.state().is_file()
    }

    /// Reads `state.json` as a `kind` state (named in the error).
    pub fn read_state<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<T> {
        let path = self.state();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a {kind} run state", path.display()))
    }

    /// Writes checkpoint `stem` (model, optimizer), then `state`, then deletes the files of
    /// `previous` when it is another stem.
    pub fn save<M: Module>(
        &self,
        stem: &str,
        model: &M,
        optimizer: &ModuleOptimizer,
        state: &impl serde::Serialize,
        previous: Option<&str>,
    ) -> Result<()> {
        let write = |path: PathBuf, bytes: &[u8]| {
            write_atomic(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
        };
        let model_bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("cannot serialise the model: {e:?}"))?;
        write(self.model(stem), &model_bytes)?;
        let optimizer_bytes = optimizer
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("cannot serialise the optimizer: {e:?}"))?;
        write(self.optimizer(stem), &optimizer_bytes)?;
        write(
            self.state(),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        if let Some(old) = previous.filter(|old| *old != stem) {
            // Only once the new state names the new files.
            let _ = std::fs::remove_file(self.model(old));
            let _ = std::fs::remove_file(self.optimizer(old));
        }
        Ok(())
    }

    /// Loads the model record of checkpoint `stem` into `model` (built as `state.json`
    /// describes); parameter ids come from the record.
    pub fn load_model<M: Module>(&self, stem: &str, model: M) -> Result<M> {
        let path = self.model(stem);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| anyhow::anyhow!("{} is not a burnpack record: {e:?}", path.display()))?;
        model.try_load_record(record).map_err(|e| {
            anyhow::anyhow!(
                "{} does not hold the model described in {}: {e:?}",
                path.display(),
                self.state().display()
            )
        })
    }

    /// Loads the optimizer record of checkpoint `stem` into `optimizer` (configured as the
    /// run was).
    pub fn load_optimizer(
        &self,
        stem: &str,
        optimizer: ModuleOptimizer,
    ) -> Result<ModuleOptimizer> {
        let path = self.optimizer(stem);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        optimizer
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| anyhow::anyhow!("{} is not an optimizer record: {e:?}", path.display()))
    }
}
