//! Image-job benchmark, side by side in one run on one layer cache: a cold build, a rebuild of the
//! unchanged Containerfile (goal: building ≤ 10 % of cold; identical inputs reuse the cold build's
//! image), and a rebuild after a change in the last layer; each job's time by phase and the disk the layer cache uses. Real agent, real Buildah (vfs,
//! chroot), real registry. Part of the suite (it asserts the cache is used); the figures in
//! docs/benchmarks.md come from
//! `cargo test --release -p raibid-agent --test image_bench -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod image_support;

use image_support::*;
use serde_json::{json, Value};
use std::time::Duration;

const CONTAINERFILE: &str = "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
RUN dd if=/dev/urandom of=/blob bs=1M count=32 2>/dev/null && sha256sum /blob > /blob.sha
RUN i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo $i > /count
COPY msg.txt /msg.txt
";

fn ms(j: &Value, phase: &str) -> f64 {
    let p = &j["image"]["phases"][phase];
    let t = |k: &str| {
        p[k].as_str()
            .map(|s| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap())
    };
    match (t("started"), t("finished")) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64,
        _ => f64::NAN,
    }
}

fn total_ms(j: &Value) -> f64 {
    let t = |k: &str| {
        j["timestamps"][k]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    (t("finished") - t("started")).num_milliseconds() as f64
}

fn clone_ms(j: &Value) -> f64 {
    j["steps"][0]["duration_ms"].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_build_vs_unchanged_rebuild_vs_last_layer_change() {
    let s = stack().await;
    let reg = Registry::start().await;
    let cache = s.cache_dir();
    s.agent("img-agent", &reg.addr, &cache);
    let dir = s.tmp.path().join("repo");
    let repo = make_repo(
        &dir,
        &[("Containerfile", CONTAINERFILE), ("msg.txt", "v1\n")],
    );
    let body = |tag: &str| {
        image_job(
            &repo,
            json!({"name": "bench/app", "tags": [tag], "test": {"commands": ["test -s /blob.sha", "cat /msg.txt"]}}),
        )
    };
    let mut rows = Vec::new();
    for (label, tag) in [("cold", "cold"), ("unchanged", "again")] {
        let id = s.submit_ok(body(tag)).await;
        let j = s.wait_final(&id, Duration::from_secs(600)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        rows.push((
            label,
            j,
            raibid_agent::image::storage::dir_bytes(&cache.join("buildah")),
        ));
    }
    std::fs::write(dir.join("msg.txt"), "v2\n").unwrap();
    commit(&dir);
    let id = s.submit_ok(body("changed")).await;
    let j = s.wait_final(&id, Duration::from_secs(600)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    rows.push((
        "last layer changed",
        j,
        raibid_agent::image::storage::dir_bytes(&cache.join("buildah")),
    ));

    println!("\n| build | clone ms | building ms | testing ms | publishing ms | whole job ms | layer cache MiB |");
    println!("|---|---|---|---|---|---|---|");
    for (label, j, bytes) in &rows {
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            clone_ms(j),
            ms(j, "building"),
            ms(j, "testing"),
            ms(j, "publishing"),
            total_ms(j),
            *bytes as f64 / (1024.0 * 1024.0)
        );
    }
    let cold = ms(&rows[0].1, "building");
    let again = ms(&rows[1].1, "building");
    let changed = ms(&rows[2].1, "building");
    println!(
        "\nrebuild unchanged: {:.1} % of cold; last layer changed: {:.1} % of cold",
        100.0 * again / cold,
        100.0 * changed / cold
    );
    // The layer cache is used: only the last layer is rebuilt after a change to it.
    let lines = |id: &str| {
        let s = &s;
        let id = id.to_string();
        async move {
            s.logs(&id, Some("building"))
                .await
                .iter()
                .map(|l| l["line"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // The unchanged rebuild does not run `buildah build` at all: its inputs are identical to the cold
    // build's, whose image it reuses (image/reuse.rs).
    let again_log = lines(rows[1].1["id"].as_str().unwrap()).await;
    assert!(
        again_log
            .iter()
            .any(|l| l.contains("build inputs identical to an earlier build"))
            && !again_log.iter().any(|l| l.starts_with("$ buildah build")),
        "{again_log:?}"
    );
    let changed_log = lines(rows[2].1["id"].as_str().unwrap()).await;
    assert_eq!(
        changed_log
            .iter()
            .filter(|l| l.starts_with("--> Using cache"))
            .count(),
        4,
        "{changed_log:?}"
    );
    assert!(
        again < cold && changed < cold,
        "cold {cold} ms, unchanged {again} ms, changed {changed} ms"
    );
}
