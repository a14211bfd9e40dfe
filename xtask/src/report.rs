//! Result tables shared by `eval` and `bench`: printed as aligned text, written as JSON and
//! Markdown under `results/`, and embedded in the docs by `cargo xtask docs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::claims::{Claim, claims_table};

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

    /// The cell of the row whose first cell is `key`, in the column named `column`.
    pub fn cell(&self, key: &str, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows
            .iter()
            .find(|r| r.first().is_some_and(|c| c == key))
            .map(|r| r[i].as_str())
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
    /// The paper's headline claims with what this run measured (verdicts are computed
    /// from them). Absent in reports written before claims existed, and in benchmarks.
    #[serde(default)]
    pub claims: Vec<Claim>,
}

impl Report {
    /// An empty report for `name`, produced by `command`.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            environment: environment(),
            tables: Vec::new(),
            claims: Vec::new(),
        }
    }

    /// Reads a report written by [`Report::write`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))
    }

    /// The claims as a table (see [`claims_table`]), titled after the report.
    pub fn claims_table(&self) -> Table {
        claims_table(
            format!("Claims of the paper: verdicts of `{}`", self.command),
            &self.claims,
        )
    }

    /// The first table whose title starts with `prefix`.
    pub fn table(&self, prefix: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.title.starts_with(prefix))
    }

    /// Markdown for the docs: a provenance line, then every table.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "_Produced by `{}` on {}._\n\n",
            self.command, self.environment
        );
        if !self.claims.is_empty() {
            out.push_str(&self.claims_table().to_markdown());
            out.push('\n');
        }
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

/// The number a cell starts with ("-48%" -> -48, "+0.5% (x)" -> 0.5, "9971" -> 9971).
pub fn leading_number(cell: &str) -> Option<f64> {
    let s = cell.trim();
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '-' || c == '+') && i == 0)))
        .map_or(s.len(), |(i, _)| i);
    s[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Measurement, Tolerance};

    #[test]
    fn leading_numbers_are_read_from_cells() {
        assert_eq!(leading_number("-48%"), Some(-48.0));
        assert_eq!(leading_number("+0.5% (x)"), Some(0.5));
        assert_eq!(leading_number(" 9971 "), Some(9971.0));
        assert_eq!(leading_number("-"), None);
        assert_eq!(leading_number("n/a"), None);
    }

    #[test]
    fn cells_are_found_by_row_key_and_column_name() {
        let mut t = Table::new("t", &["size", "variant", "time"]);
        t.row(["1024", "vanilla", "+0%"]);
        t.row(["2048", "both", "-67%"]);
        assert_eq!(t.cell("2048", "time"), Some("-67%"));
        assert_eq!(t.cell("4096", "time"), None);
        assert_eq!(t.cell("1024", "nope"), None);
    }

    #[test]
    fn reports_without_claims_still_parse_and_claims_round_trip() {
        let old = r#"{"name":"x","command":"c","environment":"e","tables":[]}"#;
        let report: Report = serde_json::from_str(old).unwrap();
        assert!(report.claims.is_empty());

        let mut report = Report::new("x", "cargo xtask eval x");
        report.claims.push(Claim::new(
            "s",
            "p",
            "%",
            Tolerance::AtMost { bound: -40.0 },
            Measurement::value(-48.0, "-48%"),
        ));
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.claims, report.claims);
        let md = back.to_markdown();
        assert!(
            md.contains("| s | p | -48% | <= -40% | reproduced |"),
            "{md}"
        );
    }
}
