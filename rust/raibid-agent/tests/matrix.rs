//! Build matrices (issue 23 §1) against real parts: real `raibid-agent` processes (steps sandboxed), a
//! real Redis, the real dispatcher (REST) in process, real git repositories and real cargo builds of a
//! small crate with features.
//!
//! Asserted: a 3×2 matrix fans out into six jobs, each with its environment, status context, slot and
//! cache key, run in parallel by several agents, and the group's combined status; `fail_fast` cancels
//! the rest on the first failure; cancel and retry of a whole group and of one cell; the well-known
//! `toolchain` axis through the environment it sets (`RUSTUP_TOOLCHAIN`) and the cache key the
//! sandboxed `rustc -vV` gives; a malformed matrix fails the config step naming the key, and more than
//! 64 cells are refused with the count.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed when the stack is dropped (also when a test fails).
#![allow(clippy::zombie_processes)]

mod matrix_support;

use matrix_support::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// A crate without dependencies whose features change what its test sees.
const CARGO_TOML: &str = "[package]\nname = \"mx\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[features]\nfast = []\nsmall = []\n";
const LIB_RS: &str = "pub fn features() -> String {\n    let mut v = Vec::new();\n    if cfg!(feature = \"fast\") { v.push(\"fast\") }\n    if cfg!(feature = \"small\") { v.push(\"small\") }\n    v.join(\"+\")\n}\n#[test]\nfn sees_its_features() {\n    println!(\"built with [{}]\", features());\n    assert_eq!(features(), std::env::var(\"RAIBID_MATRIX_FEATURES\").unwrap());\n}\n";

fn cells(g: &Value) -> Vec<Value> {
    g["cells"].as_array().unwrap().clone()
}

fn label(cell: &Value) -> String {
    cell["matrix"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}={}",
                v["axis"].as_str().unwrap(),
                v["value"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3x2_matrix_builds_six_cells_in_parallel_each_with_its_env_context_and_slot() {
    let s = stack().await;
    let url = repo(
        &s.tmp.path().join("repo"),
        &[
            ("Cargo.toml", CARGO_TOML),
            ("src/lib.rs", LIB_RS),
            (".gitignore", "/target\n"),
            (
                ".raibid.yaml",
                "matrix:\n  features: ['', fast, small]\n  profile: [dev, release]\nsteps:\n  - name: test\n    run: echo \"cell features=[$RAIBID_MATRIX_FEATURES] profile=$RAIBID_MATRIX_PROFILE\" && cargo test --profile \"$RAIBID_MATRIX_PROFILE\" --features \"$RAIBID_MATRIX_FEATURES\" -- --nocapture\n",
            ),
        ],
    );
    for n in ["a", "b", "c"] {
        s.agent(&format!("agent-{n}"));
    }
    let id = s.submit(&url).await;
    let g = s.group_of(&id).await;
    assert_eq!(cells(&g).len(), 6, "{g}");
    // Pending until every cell ended.
    assert!(!is_final(&g["group"]), "{g}");
    let g = s.group_final(&id, Duration::from_secs(600)).await;
    assert_eq!(g["status"], "succeeded", "{g}");
    assert_eq!(g["group"]["status"], "succeeded", "{g}");
    let parent_sha = g["group"]["source"]["sha"].as_str().unwrap().to_string();
    let mut labels = BTreeSet::new();
    let mut agents = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut slots = BTreeSet::new();
    for (i, c) in cells(&g).iter().enumerate() {
        assert_eq!(c["status"], "succeeded", "{c}");
        assert_eq!(c["matrix"]["role"], "cell");
        assert_eq!(c["matrix"]["group"], id.as_str());
        assert_eq!(c["matrix"]["index"], i as u64);
        // Every cell builds the commit the push's job cloned.
        assert_eq!(c["source"]["sha"], parent_sha.as_str(), "{c}");
        let l = label(c);
        let features = c["matrix"]["values"][0]["value"].as_str().unwrap();
        let profile = c["matrix"]["values"][1]["value"].as_str().unwrap();
        assert_eq!(l, format!("features={features}, profile={profile}"));
        let log = s.log(c["id"].as_str().unwrap()).await;
        assert!(
            log.contains(&format!("cell features=[{features}] profile={profile}")),
            "{l}: {log}"
        );
        assert!(
            log.contains(&format!("built with [{features}]")),
            "{l}: {log}"
        );
        // Its commit-status context names its values.
        let job: raibid_core::job::Job = serde_json::from_value(c.clone()).unwrap();
        assert_eq!(job.status_context(), format!("raibid/ci ({l})"));
        labels.insert(l);
        agents.insert(c["agent"].as_str().unwrap().to_string());
        keys.insert(c["cache"]["key"].as_str().unwrap().to_string());
        slots.insert(c["cache"]["slot"].as_str().unwrap().to_string());
    }
    assert_eq!(labels.len(), 6);
    // Parallel: the three agents shared the cells.
    assert!(agents.len() >= 2, "{agents:?}");
    // Cells ran in slots of their own (a slot is chosen by branch *and* values). Features and profiles
    // do not change the cache key (cargo's fingerprints keep them apart in one target directory); a
    // toolchain does (`a_toolchain_axis_sets_rustup_toolchain_and_the_cache_key`).
    assert!(slots.len() >= 2, "{slots:?}");
    assert_eq!(keys.len(), 1, "{keys:?}");
    // The group's log says how it fanned out; its record lists the cells.
    let plog = s.log(&id).await;
    assert!(
        plog.contains("[raibid] matrix: 6 cells (fail_fast)"),
        "{plog}"
    );
    assert_eq!(
        g["group"]["matrix"]["cells"][5]["label"],
        "features=small, profile=release"
    );
    // The group is listed.
    let page = s.get("/groups").await;
    assert_eq!(page["groups"][0]["group"]["id"], id.as_str(), "{page}");
}

/// A pipeline whose step waits until the test creates `<shared>/<marker>` (or the cell is cancelled).
fn waiting_pipeline(shared: &Path, matrix: &str, fail_when: &str) -> String {
    format!(
        "matrix:\n{matrix}steps:\n  - name: work\n    run: |\n      echo \"cell n=$RAIBID_MATRIX_N\"\n      if [ \"$RAIBID_MATRIX_N\" = \"{fail_when}\" ]; then echo failing; exit 3; fi\n      while [ ! -e {}/go ]; do sleep 0.1; done\n",
        shared.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_the_other_cells_on_the_first_failure() {
    let s = stack().await;
    let shared = s.shared();
    let url = repo(
        &s.tmp.path().join("repo"),
        &[(
            ".raibid.yaml",
            &waiting_pipeline(&shared, "  n: ['1', '2', '3', '4']\n", "2"),
        )],
    );
    s.agent("agent-a");
    s.agent("agent-b");
    let id = s.submit(&url).await;
    s.group_of(&id).await;
    // Cell n=2 fails at once; the others wait for a marker that never comes: only fail_fast ends them.
    let g = s.group_final(&id, Duration::from_secs(60)).await;
    assert_eq!(g["status"], "failed", "{g}");
    let reason = g["group"]["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("1 of 4 cells failed") && reason.contains("(n=2)"),
        "{reason}"
    );
    for c in cells(&g) {
        let n = c["matrix"]["values"][0]["value"]
            .as_str()
            .unwrap()
            .to_string();
        if n == "2" {
            assert_eq!(c["status"], "failed", "{c}");
        } else {
            assert_eq!(c["status"], "cancelled", "{c}");
        }
    }
    // Without fail_fast the others run on (here: until the marker) and the group fails only then.
    let url2 = repo(
        &s.tmp.path().join("repo2"),
        &[(
            ".raibid.yaml",
            &waiting_pipeline(&shared, "  n: ['1', '2']\n  fail_fast: false\n", "2"),
        )],
    );
    let id2 = s.submit(&url2).await;
    s.group_of(&id2).await;
    let cell1 = s
        .wait(&format!("/groups/{id2}"), Duration::from_secs(60), |g| {
            g["cells"][1]["status"] == "failed" && g["cells"][0]["status"] == "running"
        })
        .await;
    assert_eq!(cell1["status"], "running", "{cell1}");
    std::fs::write(shared.join("go"), "").unwrap();
    let g2 = s.group_final(&id2, Duration::from_secs(60)).await;
    assert_eq!(g2["status"], "failed", "{g2}");
    assert_eq!(g2["cells"][0]["status"], "succeeded", "{g2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry_act_on_a_whole_group_or_one_cell() {
    let s = stack().await;
    let shared = s.shared();
    let url = repo(
        &s.tmp.path().join("repo"),
        &[(
            ".raibid.yaml",
            &waiting_pipeline(&shared, "  n: ['1', '2', '3']\n", "none"),
        )],
    );
    s.agent("agent-a");
    let id = s.submit(&url).await;
    s.group_of(&id).await;
    // One agent: one cell runs, two wait in the queue.
    s.wait(&format!("/groups/{id}"), Duration::from_secs(60), |g| {
        g["status"] == "running" && cells(g).iter().any(|c| c["status"] == "running")
    })
    .await;
    let (st, v) = s
        .call(reqwest::Method::POST, &format!("/groups/{id}/cancel"))
        .await;
    assert_eq!(st, 202, "{v}");
    let g = s.group_final(&id, Duration::from_secs(60)).await;
    assert_eq!(g["status"], "cancelled", "{g}");
    for c in cells(&g) {
        assert_eq!(c["status"], "cancelled", "{c}");
    }
    // A group that ended cannot be cancelled again; an unknown one is a 404 naming it.
    let (st, _) = s
        .call(reqwest::Method::POST, &format!("/groups/{id}/cancel"))
        .await;
    assert_eq!(st, 409);
    let (st, v) = s
        .call(reqwest::Method::GET, "/groups/01J00000000000000000000000")
        .await;
    assert_eq!(st, 404, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("01J00000000000000000000000"));
    // Retry one cell: it replaces its old attempt in the group, which is open again until it ends.
    std::fs::write(shared.join("go"), "").unwrap();
    let old = cells(&g)[1]["id"].as_str().unwrap().to_string();
    let (st, v) = s
        .call(reqwest::Method::POST, &format!("/jobs/{old}/retry"))
        .await;
    assert_eq!(st, 201, "{v}");
    let new = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["matrix"]["index"], 1, "{v}");
    let _ = s
        .wait(&format!("/groups/{id}"), Duration::from_secs(60), |g| {
            g["cells"][1]["id"] == new.as_str() && g["cells"][1]["status"] == "succeeded"
        })
        .await;
    // The other two stay cancelled: the group is cancelled again once the retried cell ended.
    let g = s.group_final(&id, Duration::from_secs(30)).await;
    assert_eq!(g["status"], "cancelled", "{g}");
    // Retry the whole group: a new push job that fans out anew, every cell succeeds.
    let (st, v) = s
        .call(reqwest::Method::POST, &format!("/groups/{id}/retry"))
        .await;
    assert_eq!(st, 201, "{v}");
    let id2 = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["retry_of"], id.as_str());
    s.group_of(&id2).await;
    let g2 = s.group_final(&id2, Duration::from_secs(120)).await;
    assert_eq!(g2["status"], "succeeded", "{g2}");
    assert_eq!(cells(&g2).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toolchain_axis_sets_rustup_toolchain_and_the_cache_key() {
    // This machine has the stable toolchain and an installed nightly (the fuzz targets' one; the cache
    // suite uses it too) and cannot download others: the axis is tested with those two, through the
    // environment it sets and the cache key the sandboxed `rustc -vV` gives under it.
    let s = stack().await;
    let url = repo(
        &s.tmp.path().join("repo"),
        &[(
            ".raibid.yaml",
            "matrix:\n  toolchain: [stable, nightly]\nsteps:\n  - name: v\n    run: echo \"toolchain=$RUSTUP_TOOLCHAIN axis=$RAIBID_MATRIX_TOOLCHAIN\" && rustc -V\n",
        )],
    );
    s.agent("agent-a");
    s.agent("agent-b");
    let id = s.submit(&url).await;
    s.group_of(&id).await;
    let g = s.group_final(&id, Duration::from_secs(120)).await;
    assert_eq!(g["status"], "succeeded", "{g}");
    let mut keys = BTreeSet::new();
    for c in cells(&g) {
        let t = c["matrix"]["values"][0]["value"]
            .as_str()
            .unwrap()
            .to_string();
        let log = s.log(c["id"].as_str().unwrap()).await;
        assert!(log.contains(&format!("toolchain={t} axis={t}")), "{log}");
        let nightly_rustc = log
            .lines()
            .any(|l| l.contains("rustc ") && l.contains("-nightly"));
        assert_eq!(nightly_rustc, t == "nightly", "{log}");
        keys.insert(c["cache"]["key"].as_str().unwrap().to_string());
    }
    assert_eq!(keys.len(), 2, "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_oversized_matrix_fails_the_config_step_naming_the_problem() {
    let s = stack().await;
    s.agent("agent-a");
    let values: Vec<String> = (0..9).map(|i| format!("v{i}")).collect();
    let cases = [
        (
            "typo",
            "matrix:\n  features: [a]\n  exclude: [{feature: a}]\nsteps:\n  - name: a\n    run: 'true'\n".to_string(),
            "matrix.exclude[0].feature".to_string(),
        ),
        (
            "number",
            "matrix:\n  toolchain: [1.80]\nsteps:\n  - name: a\n    run: 'true'\n".to_string(),
            "matrix.toolchain[0]".to_string(),
        ),
        (
            "big",
            format!(
                "matrix:\n  a: [{0}]\n  b: [{0}]\nsteps:\n  - name: a\n    run: 'true'\n",
                values.join(", ")
            ),
            "expands to 81 cells, the limit is 64".to_string(),
        ),
    ];
    for (name, text, want) in cases {
        let url = repo(&s.tmp.path().join(name), &[(".raibid.yaml", &text)]);
        let id = s.submit(&url).await;
        let j = s
            .wait(&format!("/jobs/{id}"), Duration::from_secs(60), is_final)
            .await;
        assert_eq!(j["status"], "failed", "{j}");
        assert_eq!(j["step"], "config", "{j}");
        let reason = j["failure_reason"].as_str().unwrap();
        assert!(reason.contains(&want), "{name}: {reason}");
        assert!(j.get("matrix").is_none(), "{j}");
    }
    // Nothing was fanned out.
    let page = s.get("/groups").await;
    assert_eq!(page["groups"].as_array().unwrap().len(), 0, "{page}");
}

/// One MCP `tools/call` over the Streamable HTTP transport (JSON-RPC), as a client sends it; returns
/// the structured answer and the bytes on the wire.
async fn mcp_call(s: &Stack, name: &str, args: Value) -> (Value, usize) {
    let r = s
        .http
        .post(format!("{}/mcp", s.base))
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let body = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|d| d.contains("\"id\""))
        .unwrap_or(text.as_str())
        .to_string();
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(v["result"]["isError"] != true, "{name}: {v}");
    (v["result"]["structuredContent"].clone(), body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_waits_for_every_cell_and_diagnoses_each_failing_cell_within_the_budget() {
    let s = stack().await;
    // 16 cells; 15 fail with a long output (no structured diagnostics: each answer carries its step's
    // tail), one succeeds. Without fail_fast, every cell runs.
    let values: Vec<String> = (0..16).map(|i| format!("'c{i:02}'")).collect();
    let url = repo(
        &s.tmp.path().join("repo"),
        &[(
            ".raibid.yaml",
            &format!(
                "matrix:\n  n: [{}]\n  fail_fast: false\nsteps:\n  - name: t\n    run: |\n      i=0; while [ $i -lt 300 ]; do echo \"cell $RAIBID_MATRIX_N line $i $(printf '%0180d' 0)\"; i=$((i+1)); done\n      [ \"$RAIBID_MATRIX_N\" = c00 ] || exit 4\n",
                values.join(", ")
            ),
        )],
    );
    s.agent("agent-a");
    s.agent("agent-b");
    let id = s.submit(&url).await;
    s.group_of(&id).await;
    // wait_for_job on the group: bounded steps until every cell ended.
    let mut calls = 0;
    let w = loop {
        calls += 1;
        assert!(calls < 20, "the group did not end");
        let (w, _) = mcp_call(
            &s,
            "wait_for_job",
            json!({"job_id": id, "timeout_secs": 20}),
        )
        .await;
        if w["finished"] == true {
            break w;
        }
        assert!(
            w["cells"].as_array().unwrap().iter().any(|c| !is_final(c)),
            "{w}"
        );
    };
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["cells"].as_array().unwrap().len(), 16, "{w}");
    assert!(
        w["outcome"]
            .as_str()
            .unwrap()
            .contains("16 of 16 cells finished, 15 failed"),
        "{w}"
    );
    assert!(
        w["next"].as_str().unwrap().contains("get_diagnostics"),
        "{w}"
    );
    // get_diagnostics on the group: one answer per failing cell, all in one budget.
    let (d, wire) = mcp_call(&s, "get_diagnostics", json!({"job_id": id})).await;
    let budget = 25_000 * 3;
    assert!(wire <= budget, "{wire} bytes");
    let cells = d["cells"].as_array().unwrap();
    assert!(!cells.is_empty(), "{d}");
    let group = s.get(&format!("/groups/{id}")).await;
    let failing: Vec<&str> = group["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failed")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(failing.len(), 15);
    for c in cells {
        let cid = c["job_id"].as_str().unwrap();
        assert!(failing.contains(&cid), "{cid}");
        assert_eq!(c["status"], "failed");
        let tail = c["step_tail"]["lines"].as_array().unwrap();
        assert!(!tail.is_empty(), "{c}");
    }
    if cells.len() < 15 {
        let cut = d["cut"].as_str().unwrap();
        assert!(
            cut.contains("failing cells") && cut.contains("get_diagnostics"),
            "{cut}"
        );
    }
    // A cell's own answer is the plain one.
    let (one, _) = mcp_call(&s, "get_diagnostics", json!({"job_id": failing[3]})).await;
    assert!(one.get("cells").is_none(), "{one}");
    assert!(!one["step_tail"]["lines"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_push_s_variant_reaches_every_cell() {
    let s = stack().await;
    let url = repo(
        &s.tmp.path().join("repo"),
        &[(
            ".raibid.yaml",
            "matrix:\n  n: ['1', '2']\nsteps:\n  - name: v\n    run: echo \"cell $RAIBID_MATRIX_N variant=${CARGO_UPDATE:-none}\"\n",
        )],
    );
    s.agent("agent-a");
    // A job as the scheduler writes it: its variant in the record's `env`.
    let q = raibid_core::queue::Queue::connect(
        &s.redis.url(),
        raibid_core::queue::QueueConfig::default(),
    )
    .await
    .unwrap();
    let source: raibid_core::job::Source = serde_json::from_value(json!({
        "repo_url": url, "ref": "refs/heads/main", "sha": null,
        "trigger": {"kind": "api", "actor": null}, "delivery_id": null, "forge_repo": null
    }))
    .unwrap();
    let mut job = raibid_core::job::Job::new(source, chrono::Utc::now());
    job.env.insert("CARGO_UPDATE".into(), "1".into());
    let raibid_core::queue::Enqueued::New(job) = q.enqueue(job, None).await.unwrap() else {
        panic!()
    };
    let id = job.id.to_string();
    s.group_of(&id).await;
    let g = s.group_final(&id, Duration::from_secs(60)).await;
    assert_eq!(g["status"], "succeeded", "{g}");
    for c in cells(&g) {
        let n = c["matrix"]["values"][0]["value"]
            .as_str()
            .unwrap()
            .to_string();
        let log = s.log(c["id"].as_str().unwrap()).await;
        assert!(log.contains(&format!("cell {n} variant=1")), "{log}");
    }
}
