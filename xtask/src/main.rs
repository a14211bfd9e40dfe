//! `cargo xtask`: see the crate docs of the `xtask` library for the commands.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use xtask::eval::{EvalOptions, Status};
use xtask::fetch::{FetchOptions, FileOutcome, fetch_dataset};
use xtask::manifest::Manifest;
use xtask::{bench, docs, eval, workspace_root};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Project tooling: eval, fetch, bench, docs"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reproduce a paper's headline results ("all" for every paper): a verdict per claim.
    Eval {
        /// hier-community, mobiletl, moat, hidiffusion, mixlora or all.
        paper: String,
        /// Small grids and synthetic data; finishes in minutes on 2 cores.
        #[arg(long)]
        quick: bool,
        /// Where fetched datasets live.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Print the summary (claims and verdict counts per paper) as JSON on stdout; the
        /// reports go to stderr. The summary is always written to results/eval.json.
        #[arg(long)]
        json: bool,
    },
    /// Download a dataset listed in datasets/manifest.toml, verifying size and SHA-256.
    Fetch {
        /// Dataset name, or "list" to print the manifest.
        dataset: String,
        /// Base URL of a mirror laid out as <mirror>/<dataset>/<file>.
        #[arg(long)]
        mirror: Option<String>,
        /// Where datasets are stored (one directory per dataset).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Manifest to read (default: datasets/manifest.toml).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Run a benchmark (always from a release build).
    Bench {
        /// backends, hier-community, mobilenet, mobiletl, moat, sd, hidiffusion, llm, mixlora.
        target: String,
        /// Extra arguments for the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Refresh the generated docs pages and build the mdBook site.
    Docs {
        /// Only refresh docs/src (no mdbook needed).
        #[arg(long)]
        no_build: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let root = workspace_root();
    match cli.command {
        Cmd::Eval {
            paper,
            quick,
            data_dir,
            json,
        } => {
            let options = EvalOptions {
                quick,
                data_dir,
                results_dir: root.join("results"),
                json,
            };
            let statuses = eval::run(&paper, &options)?;
            let failed = statuses.iter().any(|(_, s)| matches!(s, Status::Failed(_)));
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Fetch {
            dataset,
            mirror,
            data_dir,
            manifest,
        } => {
            let manifest_path = manifest.unwrap_or_else(|| root.join("datasets/manifest.toml"));
            let manifest = Manifest::load(&manifest_path)?;
            if dataset == "list" {
                for (name, d) in &manifest.datasets {
                    let size: u64 = d.files.iter().map(|f| f.size).sum();
                    println!(
                        "{name:<20} {size:>12} bytes  {}  [{}]",
                        d.description, d.licence
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let options = FetchOptions {
                data_dir,
                mirror,
                progress: true,
            };
            let (dir, files) = fetch_dataset(&manifest, &dataset, &options)?;
            for f in &files {
                let what = match f.outcome {
                    FileOutcome::AlreadyPresent => "already present, verified".to_string(),
                    FileOutcome::Downloaded => "downloaded, verified".to_string(),
                    FileOutcome::Resumed { from } => format!("resumed at byte {from}, verified"),
                };
                println!("{}: {what}", f.path.display());
            }
            println!("{dataset} is in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { target, args } => bench_command(&root, &target, &args),
        Cmd::Docs { no_build } => {
            docs::run(&root, !no_build)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bench_command(root: &std::path::Path, target: &str, args: &[String]) -> Result<ExitCode> {
    let Some((_, what, issue)) = bench::TARGETS.iter().find(|(name, _, _)| *name == target) else {
        let names: Vec<&str> = bench::TARGETS.iter().map(|t| t.0).collect();
        bail!("unknown benchmark {target:?}; known: {}", names.join(", "));
    };
    if let Some(issue) = issue {
        println!("bench {target} ({what}): not implemented yet (issue #{issue})");
        return Ok(ExitCode::from(2));
    }
    // Benchmarks are only meaningful optimised: re-run this command from a release build
    // (with the ndarray backend compiled in for the backend comparison).
    if cfg!(debug_assertions) {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "run",
                "--quiet",
                "--release",
                "--package",
                "xtask",
                "--features",
                "ndarray",
            ])
            .arg("--")
            .args(["bench", target])
            .args(args)
            .current_dir(root)
            .status()
            .context("cannot start the release build of xtask")?;
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let report = match target {
        "backends" => bench::backends::run()?,
        "hier-community" => bench::hier_community::run(args)?,
        "mobilenet" => bench::mobilenet::run()?,
        "moat" => bench::moat::run(args)?,
        "mobiletl" => bench::mobiletl::run(args)?,
        "llm" => bench::llm::run(args)?,
        "mixlora" => bench::mixlora::run(args)?,
        "sd" => bench::sd::run(args)?,
        "hidiffusion" => bench::hidiffusion::run(args)?,
        other => bail!("benchmark {other} has no runner"),
    };
    for table in &report.tables {
        println!("{}", table.to_text());
    }
    let path = report.write(&root.join("results/bench"), target)?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}
