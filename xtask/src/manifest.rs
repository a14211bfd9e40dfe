//! `datasets/manifest.toml`: where each dataset comes from, how big it is, its checksum
//! and licence. The manifest is the single source of truth for `cargo xtask fetch`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// The parsed manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Datasets by name (the name is also the directory under the data dir and under a
    /// mirror).
    pub datasets: BTreeMap<String, Dataset>,
}

/// One dataset: one or more files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// One line saying what it is.
    pub description: String,
    /// The licence under which the publisher distributes it.
    pub licence: String,
    /// Where the publisher describes it.
    pub homepage: String,
    /// Crates whose tests or evaluations read it.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// The files to download.
    pub files: Vec<DatasetFile>,
}

/// How a downloaded file is unpacked after verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unpack {
    /// A gzip-compressed tar archive, extracted into the dataset directory.
    TarGz,
    /// A zip archive, extracted into the dataset directory.
    Zip,
    /// A single gzip-compressed file, decompressed next to it without the `.gz` suffix.
    Gzip,
}

/// One downloadable file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetFile {
    /// Canonical URL.
    pub url: String,
    /// Local file name; defaults to the last segment of the URL.
    pub name: Option<String>,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the downloaded bytes (lower-case hex).
    pub sha256: String,
    /// Optional unpacking step.
    pub unpack: Option<Unpack>,
}

impl DatasetFile {
    /// The local file name.
    pub fn file_name(&self) -> Result<String> {
        if let Some(name) = &self.name {
            return Ok(name.clone());
        }
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        match path.rsplit('/').next() {
            Some(last) if !last.is_empty() => Ok(last.to_string()),
            _ => bail!(
                "cannot derive a file name from URL {}; set `name`",
                self.url
            ),
        }
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read dataset manifest {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid dataset manifest {}", path.display()))
    }

    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<Self> {
        let manifest: Manifest = toml::from_str(text)?;
        for (name, dataset) in &manifest.datasets {
            ensure!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "dataset name {name:?} must be lower-case letters, digits and '-'"
            );
            ensure!(!dataset.files.is_empty(), "dataset {name} lists no files");
            for file in &dataset.files {
                let file_name = file.file_name()?;
                ensure!(
                    !file_name.contains(['/', '\\']) && file_name != ".." && file_name != ".",
                    "dataset {name}: file name {file_name:?} must be a plain name"
                );
                ensure!(
                    file.sha256.len() == 64
                        && file
                            .sha256
                            .chars()
                            .all(|c| matches!(c, '0'..='9' | 'a'..='f')),
                    "dataset {name}: {file_name}: sha256 must be 64 lower-case hex digits"
                );
                ensure!(
                    file.size > 0,
                    "dataset {name}: {file_name}: size must be positive"
                );
            }
        }
        Ok(manifest)
    }

    /// Looks a dataset up by name, listing the known ones on failure.
    pub fn dataset(&self, name: &str) -> Result<&Dataset> {
        self.datasets.get(name).with_context(|| {
            format!(
                "unknown dataset {name:?}; known: {}",
                self.datasets.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}
