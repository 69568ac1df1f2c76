//! Sandbox setup cost (issue 11): a `true` task through the runner with and without the
//! sandbox, in one run, rounds interleaved so that every variant sees the same machine load.
//!
//! Variants: the floor (`bash -lc true` with the runner's environment, spawned and waited for
//! by `std::process::Command`, no runner), the runner with `sandbox = "none"`, with Landlock +
//! seccomp only (`best_effort`, `namespaces = false`) and with the full sandbox (the default).
//! Prints a Markdown table for BENCHMARKS.md.
//!
//! Run: `cargo bench -p crabnet-core --bench sandbox` (`CRABNET_BENCH_ROUNDS=N`, default 200).

use std::time::{Duration, Instant};

use crabnet_core::model::SandboxLevel;
use crabnet_core::runner::{self, RunRequest, RunnerConfig};
use crabnet_core::sandbox::SandboxPolicy;

fn variants() -> Vec<(&'static str, Option<RunnerConfig>)> {
    vec![
        ("floor: spawn + wait `bash -lc true`", None),
        (
            "runner, sandbox = none",
            Some(RunnerConfig {
                sandbox: SandboxPolicy::None,
                ..RunnerConfig::default()
            }),
        ),
        (
            "runner, Landlock + seccomp (no namespaces)",
            Some(RunnerConfig {
                sandbox: SandboxPolicy::BestEffort,
                namespaces: false,
                ..RunnerConfig::default()
            }),
        ),
        (
            "runner, full sandbox (default)",
            Some(RunnerConfig::default()),
        ),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: do one quick round.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = if quick {
        2
    } else {
        std::env::var("CRABNET_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let root = tempfile::tempdir().expect("temp dir");
    let variants = variants();
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds + 5 {
        for (i, (_, cfg)) in variants.iter().enumerate() {
            let start = Instant::now();
            match cfg {
                None => {
                    // The same environment the runner gives tasks (no user profile).
                    let status = std::process::Command::new("bash")
                        .args(["-lc", "true"])
                        .env_clear()
                        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                        .env("HOME", root.path())
                        .env("TMPDIR", root.path())
                        .env("LANG", "C.UTF-8")
                        .current_dir(root.path())
                        .stdin(std::process::Stdio::null())
                        .status()
                        .expect("spawn bash");
                    assert!(status.success());
                }
                Some(cfg) => {
                    let out = rt
                        .block_on(runner::run(
                            RunRequest {
                                task_id: "bench",
                                command: "true",
                                timeout: Duration::from_secs(30),
                                work_root: root.path(),
                                network: false,
                                isolation: SandboxLevel::Full,
                                source_date_epoch: None,
                                output: crabnet_core::model::OutputHash::Combined,
                            },
                            cfg,
                        ))
                        .expect("run");
                    assert!(out.success(), "{out:?}");
                }
            }
            // The first rounds warm caches (and the sandbox's one-time kernel probe).
            if round >= 5 {
                times[i].push(start.elapsed());
            }
        }
    }
    println!("| variant | median ms | p90 ms | added over `sandbox = none` (median) |");
    println!("|---|---|---|---|");
    let mut medians = Vec::new();
    for t in &mut times {
        t.sort();
        medians.push(percentile(t, 0.5));
    }
    for (i, (name, _)) in variants.iter().enumerate() {
        let added = if i >= 2 {
            format!(
                "{:+.2} ms",
                (medians[i].as_secs_f64() - medians[1].as_secs_f64()) * 1000.0
            )
        } else {
            "".into()
        };
        println!(
            "| {name} | {} | {} | {added} |",
            ms(medians[i]),
            ms(percentile(&times[i], 0.9))
        );
    }
    println!("\n{rounds} rounds, variants interleaved within each round.");
}
