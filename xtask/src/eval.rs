//! `cargo xtask eval <paper>|all [--quick] [--json]`: each paper's reproduction, printed as
//! "paper vs this implementation" tables and a table of the paper's headline claims with a
//! verdict per claim (computed from what the run measured, see [`crate::claims`]), written
//! to `results/<paper>/`; then a summary of the claims per verdict for every paper.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::claims::{Claim, VerdictCounts};
use crate::report::{Report, Table, write_atomic};

/// Settings shared by every reproduction.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Small grids and synthetic data: minutes on 2 cores.
    pub quick: bool,
    /// Root of fetched datasets (`cargo xtask fetch`).
    pub data_dir: PathBuf,
    /// Where results go (`results/<paper>/`); benchmark results are read from
    /// `<results_dir>/bench/`.
    pub results_dir: PathBuf,
    /// Print the summary as JSON on stdout (the reports go to stderr).
    pub json: bool,
}

/// A reproduction: produces the report and writes its plots under `results/<paper>/`.
pub type Reproduction = fn(&EvalOptions) -> Result<Report>;

/// One paper of the workspace.
#[derive(Debug, Clone, Copy)]
pub struct Paper {
    /// Name used on the command line (also the crate name).
    pub name: &'static str,
    /// The paper.
    pub title: &'static str,
    /// The issue that tracks its implementation.
    pub issue: u32,
    /// The reproduction, once the crate implements it.
    pub reproduction: Option<Reproduction>,
}

/// Every paper, in the order the workspace builds them.
pub const PAPERS: &[Paper] = &[
    Paper {
        name: "hier-community",
        title: "Dreveton et al., When Does Bottom-up Beat Top-down in Hierarchical Community Detection?",
        issue: 3,
        reproduction: Some(crate::papers::hier_community::reproduce),
    },
    Paper {
        name: "mobiletl",
        title: "Chiang et al., MobileTL: On-device Transfer Learning with Inverted Residual Blocks",
        issue: 5,
        reproduction: Some(crate::papers::mobiletl::reproduce),
    },
    Paper {
        name: "moat",
        title: "Yang et al., MOAT: Alternating Mobile Convolution and Attention",
        issue: 6,
        reproduction: Some(crate::papers::moat::reproduce),
    },
    Paper {
        name: "hidiffusion",
        title: "Zhang et al., HiDiffusion: Unlocking Higher-Resolution Creativity and Efficiency",
        issue: 8,
        reproduction: Some(crate::papers::hidiffusion::reproduce),
    },
    Paper {
        name: "mixlora",
        title: "Li et al., MixLoRA: LoRA-based Mixture of Experts for LLM Fine-Tuning",
        issue: 10,
        reproduction: Some(crate::papers::mixlora::reproduce),
    },
];

/// Looks a paper up by its command-line name.
pub fn paper(name: &str) -> Result<&'static Paper> {
    match PAPERS.iter().find(|p| p.name == name) {
        Some(p) => Ok(p),
        None => bail!(
            "unknown paper {name:?}; known: all, {}",
            PAPERS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Runs `target` (a paper name or `all`): prints each report with its claims, then a
/// summary table with, per paper, how many claims got each verdict (or, with
/// `options.json`, prints that summary as JSON on stdout and the reports on stderr).
/// Writes each report to `results/<paper>/summary.{json,md}` and the summary to
/// `results/eval.json`. Papers whose crate is not implemented yet are listed as such,
/// not treated as errors.
pub fn run(target: &str, options: &EvalOptions) -> Result<Vec<(&'static Paper, Status)>> {
    let papers: Vec<&Paper> = if target == "all" {
        PAPERS.iter().collect()
    } else {
        vec![paper(target)?]
    };
    // With --json, stdout carries only the JSON summary.
    let show = |text: &str| {
        if options.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    };
    let mut statuses = Vec::new();
    for paper in papers {
        let status = match paper.reproduction {
            None => Status::NotImplemented,
            Some(reproduce) => {
                show(&format!("== {} ==", paper.name));
                match reproduce(options) {
                    Ok(report) => {
                        for table in &report.tables {
                            show(&table.to_text());
                        }
                        show(&report.claims_table().to_text());
                        let path =
                            report.write(&options.results_dir.join(paper.name), "summary")?;
                        Status::Done {
                            path,
                            claims: report.claims,
                        }
                    }
                    Err(err) => Status::Failed(format!("{err:#}")),
                }
            }
        };
        statuses.push((paper, status));
    }
    let command = format!(
        "cargo xtask eval {target}{}",
        if options.quick { " --quick" } else { "" }
    );
    let summary = EvalSummary::new(command, &statuses);
    std::fs::create_dir_all(&options.results_dir)?;
    write_atomic(
        &options.results_dir.join("eval.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", summary.table().to_text());
    }
    Ok(statuses)
}

/// The outcome of one paper's reproduction.
#[derive(Debug, Clone)]
pub enum Status {
    /// The crate does not implement the paper yet.
    NotImplemented,
    /// Report written to `path` (JSON), with the paper's claims.
    Done {
        /// The report's JSON file.
        path: PathBuf,
        /// The claims with what the run measured.
        claims: Vec<Claim>,
    },
    /// The reproduction failed with this error.
    Failed(String),
}

/// What `cargo xtask eval` reports at the end: per paper, the count of claims in each
/// verdict and the claims themselves (also written to `results/eval.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The command that was run.
    pub command: String,
    /// Machine and date.
    pub environment: String,
    /// One entry per paper run.
    pub papers: Vec<PaperSummary>,
    /// The counts over every paper.
    pub totals: VerdictCounts,
    /// Papers whose reproduction failed.
    pub failed_runs: usize,
}

/// One paper in [`EvalSummary`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaperSummary {
    /// The paper's command-line name.
    pub paper: String,
    /// "done", "failed" or "not implemented".
    pub run: String,
    /// The error of a failed run.
    #[serde(default)]
    pub error: Option<String>,
    /// The report's JSON file of a finished run.
    #[serde(default)]
    pub results: Option<String>,
    /// How many claims got each verdict.
    pub counts: VerdictCounts,
    /// The claims, each with its computed verdict.
    pub claims: Vec<Claim>,
}

impl EvalSummary {
    /// The summary of `statuses`.
    pub fn new(command: String, statuses: &[(&Paper, Status)]) -> Self {
        let mut totals = VerdictCounts::default();
        let mut failed_runs = 0;
        let papers = statuses
            .iter()
            .map(|(paper, status)| {
                let (run, error, results, claims) = match status {
                    Status::NotImplemented => (
                        "not implemented",
                        Some(format!("tracked in issue #{}", paper.issue)),
                        None,
                        Vec::new(),
                    ),
                    Status::Done { path, claims } => (
                        "done",
                        None,
                        Some(path.display().to_string()),
                        claims.clone(),
                    ),
                    Status::Failed(err) => {
                        failed_runs += 1;
                        ("failed", Some(err.clone()), None, Vec::new())
                    }
                };
                let counts = VerdictCounts::of(&claims);
                totals.add(&counts);
                PaperSummary {
                    paper: paper.name.to_string(),
                    run: run.to_string(),
                    error,
                    results,
                    counts,
                    claims,
                }
            })
            .collect();
        Self {
            command,
            environment: crate::report::environment(),
            papers,
            totals,
            failed_runs,
        }
    }

    /// The summary table: per paper, the count of claims in each verdict and the run.
    pub fn table(&self) -> Table {
        let mut table = Table::new(
            format!("{}: claims per verdict", self.command),
            &[
                "paper",
                "reproduced",
                "not reproduced",
                "not run here",
                "not reproducible",
                "run",
                "results",
            ],
        );
        for p in &self.papers {
            let c = &p.counts;
            let detail = p
                .results
                .clone()
                .or_else(|| p.error.clone())
                .unwrap_or_default();
            let run = match p.run.as_str() {
                "failed" => "FAILED".to_string(),
                other => other.to_string(),
            };
            if p.run == "done" {
                table.row([
                    p.paper.clone(),
                    c.reproduced.to_string(),
                    c.not_reproduced.to_string(),
                    c.not_run_here.to_string(),
                    c.not_reproducible.to_string(),
                    run,
                    detail,
                ]);
            } else {
                table.row([
                    p.paper.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    run,
                    detail,
                ]);
            }
        }
        let t = &self.totals;
        table.row([
            "total".to_string(),
            t.reproduced.to_string(),
            t.not_reproduced.to_string(),
            t.not_run_here.to_string(),
            t.not_reproducible.to_string(),
            if self.failed_runs > 0 {
                format!("{} FAILED", self.failed_runs)
            } else {
                String::new()
            },
            String::new(),
        ]);
        table.note(
            "reproduced: measured within the stated tolerance; not reproduced: measured \
             outside it; not run here: needs data, weights, hardware or the full run (each \
             paper's claims table names what and the command); not reproducible: the \
             paper's number cannot be obtained by construction (the claims table says why).",
        );
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Measurement, Tolerance};

    fn claim(value: Option<f64>) -> Claim {
        Claim::new(
            "memory -46%",
            "-46.3%",
            "%",
            Tolerance::Absolute {
                target: -46.3,
                within: 1.5,
            },
            match value {
                Some(v) => Measurement::value(v, format!("{v}%")),
                None => Measurement::missing("a GPU", "cargo xtask eval x"),
            },
        )
    }

    #[test]
    fn summary_counts_verdicts_per_paper_and_in_total() {
        let statuses = vec![
            (
                &PAPERS[0],
                Status::Done {
                    path: PathBuf::from("results/a/summary.json"),
                    claims: vec![claim(Some(-45.5)), claim(Some(-30.0)), claim(None)],
                },
            ),
            (&PAPERS[1], Status::Failed("boom".into())),
            (
                &PAPERS[2],
                Status::Done {
                    path: PathBuf::from("results/b/summary.json"),
                    claims: vec![claim(Some(-46.0))],
                },
            ),
        ];
        let summary = EvalSummary::new("cargo xtask eval all".into(), &statuses);
        assert_eq!(
            summary.papers[0].counts,
            VerdictCounts {
                reproduced: 1,
                not_reproduced: 1,
                not_run_here: 1,
                not_reproducible: 0
            }
        );
        assert_eq!(summary.papers[1].run, "failed");
        assert_eq!(summary.failed_runs, 1);
        assert_eq!(summary.totals.reproduced, 2);
        assert_eq!(summary.totals.total(), 4);

        let table = summary.table();
        assert_eq!(
            table.rows[0][..5],
            ["hier-community", "1", "1", "1", "0"].map(String::from)
        );
        assert_eq!(table.rows[1][5], "FAILED");
        assert_eq!(
            table.rows.last().unwrap()[..2],
            ["total", "2"].map(String::from)
        );

        // The JSON carries the same counts and every claim with its verdict.
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["papers"][0]["counts"]["not_reproduced"], 1);
        assert_eq!(
            json["papers"][0]["claims"][1]["verdict"]["verdict"],
            "not_reproduced"
        );
        let back: EvalSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back.papers[0].claims, summary.papers[0].claims);
    }

    #[test]
    fn a_measurement_moved_outside_tolerance_changes_the_summary() {
        let mut claims = vec![claim(Some(-45.5))];
        let status = |claims: &Vec<Claim>| {
            vec![(
                &PAPERS[1],
                Status::Done {
                    path: PathBuf::from("x"),
                    claims: claims.clone(),
                },
            )]
        };
        let before = EvalSummary::new("c".into(), &status(&claims));
        assert_eq!(before.totals.reproduced, 1);
        claims[0].measurement = Measurement::value(-20.0, "-20%");
        let after = EvalSummary::new("c".into(), &status(&claims));
        assert_eq!(after.totals.reproduced, 0);
        assert_eq!(after.totals.not_reproduced, 1);
    }
}
