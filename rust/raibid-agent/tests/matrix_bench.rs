//! Benchmark (issue 23 §1, "Done when"): the fan-out cost of a build matrix, push → every cell claimed,
//! for 6 and 64 cells, through the real stack (dispatcher API in process, real Redis, real agent
//! processes with enough consumers for every cell at once, real git). Run:
//!
//! ```sh
//! cd rust && cargo test --release -p raibid-agent --test matrix_bench -- --nocapture
//! ```
//!
//! Figures come from the job records (`timestamps`): push = the group job's `received`; fan-out = the
//! cells' `queued` (written by the fan-out script); claimed = each cell's `claimed`. Each size runs
//! `BENCH_RUNS` times (default 3) on new commits of one repository (its mirror warm after the first).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed when the stack is dropped (also when a test fails).
#![allow(clippy::zombie_processes, dead_code)]

mod matrix_support;

use matrix_support::*;
use serde_json::Value;
use std::time::Duration;

fn ms(a: &Value, b: &Value) -> f64 {
    let p = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    (p(b) - p(a)).num_microseconds().unwrap() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_push_to_every_cell_claimed() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = stack().await;
    let shared = s.shared();
    // 4 agent processes × 16 consumers: every one of 64 cells can be claimed at once.
    for n in ["a", "b", "c", "d"] {
        s.agent_with(&format!("agent-{n}"), &["--concurrency", "16"]);
    }
    let dir = s.tmp.path().join("repo");
    let url = repo(&dir, &[("README", "bench\n")]);
    println!("| cells | run | push → group claimed (ms) | claimed → cells queued (fan-out, ms) | fan-out → every cell claimed (ms) | push → every cell claimed (ms) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (cells, a, b) in [(6usize, 3usize, 2usize), (64, 8, 8)] {
        for run in 0..runs {
            let marker = shared.join(format!("go-{cells}-{run}"));
            let av: Vec<String> = (0..a).map(|i| format!("'a{i}'")).collect();
            let bv: Vec<String> = (0..b).map(|i| format!("'b{i}'")).collect();
            std::fs::write(
                dir.join(".raibid.yaml"),
                format!(
                    "matrix:\n  a: [{}]\n  b: [{}]\nsteps:\n  - name: hold\n    run: while [ ! -e {} ]; do sleep 0.2; done\n",
                    av.join(", "),
                    bv.join(", "),
                    marker.display()
                ),
            )
            .unwrap();
            git(&dir, &["add", "-A"]);
            git(&dir, &["commit", "-qm", &format!("{cells}-{run}")]);
            let id = s.submit(&url).await;
            s.group_of(&id).await;
            let g = s
                .wait(&format!("/groups/{id}"), Duration::from_secs(300), |g| {
                    let c = g["cells"].as_array().unwrap();
                    c.len() == cells && c.iter().all(|c| !c["timestamps"]["claimed"].is_null())
                })
                .await;
            let received = &g["group"]["timestamps"]["received"];
            let gclaimed = &g["group"]["timestamps"]["claimed"];
            let queued = &g["cells"][0]["timestamps"]["queued"];
            let last = g["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["timestamps"]["claimed"].clone())
                .max_by(|x, y| x.as_str().cmp(&y.as_str()))
                .unwrap();
            println!(
                "| {cells} | {run} | {:.1} | {:.1} | {:.1} | {:.1} |",
                ms(received, gclaimed),
                ms(gclaimed, queued),
                ms(queued, &last),
                ms(received, &last)
            );
            std::fs::write(&marker, "").unwrap();
            let g = s.group_final(&id, Duration::from_secs(300)).await;
            assert_eq!(g["status"], "succeeded", "{g}");
        }
    }
}
