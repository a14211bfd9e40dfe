//! `cargo xtask eval <paper>|all [--quick]`: each paper's reproduction, printed as
//! "paper vs this implementation" tables and written to `results/<paper>/`.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::report::{Report, Table};

/// Settings shared by every reproduction.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Small grids and synthetic data: minutes on 2 cores.
    pub quick: bool,
    /// Root of fetched datasets (`cargo xtask fetch`).
    pub data_dir: PathBuf,
    /// Where results go (`results/<paper>/`).
    pub results_dir: PathBuf,
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

/// Runs `target` (a paper name or `all`), printing each report and a final status table.
/// Papers whose crate is not implemented yet are listed as such, not treated as errors.
pub fn run(target: &str, options: &EvalOptions) -> Result<Vec<(&'static Paper, Status)>> {
    let papers: Vec<&Paper> = if target == "all" {
        PAPERS.iter().collect()
    } else {
        vec![paper(target)?]
    };
    let mut statuses = Vec::new();
    for paper in papers {
        let status = match paper.reproduction {
            None => Status::NotImplemented,
            Some(reproduce) => {
                println!("== {} ==", paper.name);
                match reproduce(options) {
                    Ok(report) => {
                        for table in &report.tables {
                            println!("{}", table.to_text());
                        }
                        let path =
                            report.write(&options.results_dir.join(paper.name), "summary")?;
                        Status::Done(path)
                    }
                    Err(err) => Status::Failed(format!("{err:#}")),
                }
            }
        };
        statuses.push((paper, status));
    }
    let mut table = Table::new(
        format!(
            "cargo xtask eval {target}{}",
            if options.quick { " --quick" } else { "" }
        ),
        &["paper", "status", "results"],
    );
    for (paper, status) in &statuses {
        let (state, detail) = match status {
            Status::NotImplemented => (
                "not implemented yet".to_string(),
                format!(
                    "crate `{}` is tracked in issue #{}",
                    paper.name, paper.issue
                ),
            ),
            Status::Done(path) => ("reproduced".to_string(), path.display().to_string()),
            Status::Failed(err) => ("FAILED".to_string(), err.clone()),
        };
        table.row([paper.name.to_string(), state, detail]);
    }
    println!("{}", table.to_text());
    Ok(statuses)
}

/// The outcome of one paper's reproduction.
#[derive(Debug, Clone)]
pub enum Status {
    /// The crate does not implement the paper yet.
    NotImplemented,
    /// Report written to this JSON file.
    Done(PathBuf),
    /// The reproduction failed with this error.
    Failed(String),
}
