//! Issue 23's "Done when", matrix and artifacts together: a `.raibid.yaml` with a 3×2 matrix and an
//! artifact fans out into six cells on two real agent processes, each cell uploads its own artifact to a
//! real registry (`docker-registry`, started here), the group's combined status is `succeeded`, and every
//! cell's artifact is listed (REST and MCP `list_artifacts`) and downloaded by digest through REST with
//! the bytes that cell wrote (the CLI's `raibid artifacts get` is tested in raibid_real_test.nu).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod image_support;

use image_support::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PIPELINE: &str = "matrix:\n  flavor: [a, b, c]\n  mode: [x, y]\nsteps:\n  - name: make\n    run: mkdir -p out && printf '%s-%s' \"$RAIBID_MATRIX_FLAVOR\" \"$RAIBID_MATRIX_MODE\" > out/result.txt\nartifacts:\n  paths: [out/result.txt]\n";

async fn get(s: &Stack, path: &str) -> reqwest::Response {
    s.http
        .get(format!("{}{path}", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

async fn group_final(s: &Stack, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let g: Value = get(s, &format!("/api/v1/groups/{id}"))
            .await
            .json()
            .await
            .unwrap_or(Value::Null);
        let cells = g["cells"].as_array().map(|c| c.len()).unwrap_or(0);
        let ended = g["cells"].as_array().is_some_and(|c| {
            c.iter()
                .all(|c| !matches!(c["status"].as_str(), Some("queued" | "running")))
        });
        if cells == 6 && ended && g["status"] != "running" && g["status"] != "queued" {
            return g;
        }
        assert!(Instant::now() < deadline, "group {id} not final: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_3x2_matrix_with_an_artifact_gives_each_cell_its_own_artifact_downloadable_by_digest() {
    let reg = Registry::start().await;
    let addr = reg.addr.clone();
    let s = stack_with(move |st| {
        st.intake.artifact_registry = raibid_dispatcher::artifacts::RegistryAccess {
            registry: Some(addr),
            insecure: true,
            ..Default::default()
        };
    })
    .await;
    let cache = s.cache_dir();
    s.agent_of("cell-agent-1", "rust", &reg.addr, &cache.join("1"));
    s.agent_of("cell-agent-2", "rust", &reg.addr, &cache.join("2"));
    let repo = make_repo(
        &s.tmp.path().join("matrix-art"),
        &[("README", "cells\n"), (".raibid.yaml", PIPELINE)],
    );
    let id = s.submit_ok(json!({"repo_url": repo, "ref": "main"})).await;
    let g = group_final(&s, &id, Duration::from_secs(300)).await;
    assert_eq!(g["status"], "succeeded", "{g}");
    let cells = g["cells"].as_array().unwrap().clone();
    let mut seen = BTreeSet::new();
    let mut agents = BTreeSet::new();
    for c in &cells {
        let cid = c["id"].as_str().unwrap();
        assert_eq!(c["status"], "succeeded", "{c}");
        agents.insert(c["agent"].as_str().unwrap_or_default().to_string());
        let values: Vec<String> = c["matrix"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["value"].as_str().unwrap().to_string())
            .collect();
        let want = values.join("-");
        // REST: the cell's own artifact, with its digest.
        let list: Value = get(&s, &format!("/api/v1/jobs/{cid}/artifacts"))
            .await
            .json()
            .await
            .unwrap();
        let files = list["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{list}");
        assert_eq!(files[0]["name"], "out/result.txt");
        let digest = files[0]["digest"].as_str().unwrap().to_string();
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(Sha256::digest(want.as_bytes())))
        );
        // Downloaded by digest: the bytes this cell wrote.
        let r = get(&s, &format!("/api/v1/jobs/{cid}/artifacts/{digest}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), want.as_bytes());
        // MCP: names, sizes, digests and a download URL, never the bytes.
        let r: Value = s
            .http
            .post(format!("{}/mcp", s.base))
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "list_artifacts", "arguments": {"job_id": cid}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let text = r["result"]["content"][0]["text"].as_str().unwrap();
        let a: Value = serde_json::from_str(text).unwrap();
        assert_eq!(a["files"][0]["digest"], digest.as_str(), "{a}");
        assert!(!text.contains(&want), "MCP answered the bytes: {text}");
        seen.insert(want);
    }
    assert_eq!(
        seen,
        ["a-x", "a-y", "b-x", "b-y", "c-x", "c-y"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    // The group itself uploaded nothing (it fanned out before any step).
    let list: Value = get(&s, &format!("/api/v1/jobs/{id}/artifacts"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["files"], json!([]), "{list}");
    assert_eq!(agents.len(), 2, "both agents ran cells: {agents:?}");
}
