//! Result tables shared by `eval` and `bench`: printed as aligned text, written as JSON and
//! Markdown under `results/`, and embedded in the docs by `cargo xtask docs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One table with a title, a header row, body rows and notes under it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    /// Title, printed above the table.
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Cells, one `Vec` per row, as many as `columns`.
    pub rows: Vec<Vec<String>>,
    /// Lines printed below the table (provenance, caveats, what needs data).
    pub notes: Vec<String>,
}

impl Table {
    /// A table with the given title and column names.
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Appends a row.
    ///
    /// # Panics
    /// When the row does not have one cell per column (a bug in the caller).
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        let row: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        assert_eq!(
            row.len(),
            self.columns.len(),
            "row {row:?} for columns {:?}",
            self.columns
        );
        self.rows.push(row);
        self
    }

    /// Appends a note.
    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }

    /// Aligned plain-text rendering for the terminal.
    pub fn to_text(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.columns[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.columns));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        writeln!(out, "{}", line(&rule)).unwrap();
        for row in &self.rows {
            writeln!(out, "{}", line(row)).unwrap();
        }
        for note in &self.notes {
            writeln!(out, "  * {note}").unwrap();
        }
        out
    }

    /// GitHub-flavoured Markdown rendering for the docs.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &String| s.replace('|', "\\|");
        let mut out = format!("### {}\n\n", self.title);
        writeln!(
            out,
            "| {} |",
            self.columns.iter().map(esc).collect::<Vec<_>>().join(" | ")
        )
        .unwrap();
        writeln!(out, "|{}", "---|".repeat(self.columns.len())).unwrap();
        for row in &self.rows {
            writeln!(
                out,
                "| {} |",
                row.iter().map(esc).collect::<Vec<_>>().join(" | ")
            )
            .unwrap();
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                writeln!(out, "- {note}").unwrap();
            }
        }
        out
    }
}

/// A set of tables produced by one run, with where and how it was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Short name: the paper (`hier-community`) or benchmark (`bench-backends`).
    pub name: String,
    /// The command that produced it.
    pub command: String,
    /// Machine description (CPU count, OS) and date.
    pub environment: String,
    /// The tables.
    pub tables: Vec<Table>,
}

impl Report {
    /// An empty report for `name`, produced by `command`.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            environment: environment(),
            tables: Vec::new(),
        }
    }

    /// Markdown for the docs: a provenance line, then every table.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "_Produced by `{}` on {}._\n\n",
            self.command, self.environment
        );
        for table in &self.tables {
            out.push_str(&table.to_markdown());
            out.push('\n');
        }
        out
    }

    /// Writes `<dir>/<file_stem>.json` and `.md` atomically; returns the JSON path.
    pub fn write(&self, dir: &Path, file_stem: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = dir.join(format!("{file_stem}.json"));
        write_atomic(&json, serde_json::to_string_pretty(self)?.as_bytes())?;
        write_atomic(
            &dir.join(format!("{file_stem}.md")),
            self.to_markdown().as_bytes(),
        )?;
        Ok(json)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so readers never see a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// "N CPUs, OS/arch, YYYY-MM-DD" for provenance lines.
pub fn environment() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown date".into());
    format!(
        "{cpus} CPUs, {}/{}, {date}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Formats `x` with `digits` significant decimals, trimming nothing (tables stay aligned).
pub fn fmt_f(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}
