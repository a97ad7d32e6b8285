//! Artifact upload throughput, side by side in one run against one real registry (`docker-registry`):
//! a 100 MB file uploaded by the agent's own code path (`raibid_agent::artifacts::collect` + `upload`:
//! open without following links, read, SHA-256, monolithic blob push with oci-client, manifest) and the
//! same bytes pushed by a reference client, `skopeo copy` of an OCI layout directory holding that blob
//! (plus the same empty config and a manifest). Each round uses a fresh random file and fresh repositories
//! (nothing deduplicated), the order alternates between rounds; the medians are printed. Part of the
//! suite (it asserts both pushes land, bit-identical digests); the figures in docs/benchmarks.md come from
//! `cargo test --release -p raibid-agent --test artifacts_bench -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod image_support;

use image_support::Registry;
use raibid_agent::artifacts::{collect, upload, Roots, Target};
use raibid_core::artifacts::{ArtifactSpec, Caps, When};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const SIZE: usize = 100 * 1000 * 1000;
const ROUNDS: usize = 3;

fn random_file(path: &Path, seed: u64) -> String {
    let mut f = std::fs::File::create(path).unwrap();
    let mut h = Sha256::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = SIZE;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n;
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// An OCI image layout holding `blob` (hard-linked) as the one layer of an artifact manifest.
fn oci_layout(dir: &Path, blob: &Path, digest: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::hard_link(blob, blobs.join(digest.trim_start_matches("sha256:"))).unwrap();
    let config = b"{}";
    let cd = format!("sha256:{}", hex::encode(Sha256::digest(config)));
    std::fs::write(blobs.join(cd.trim_start_matches("sha256:")), config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.raibid.artifacts.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": digest, "size": SIZE}],
    });
    let mb = serde_json::to_vec(&manifest).unwrap();
    let md = format!("sha256:{}", hex::encode(Sha256::digest(&mb)));
    std::fs::write(blobs.join(md.trim_start_matches("sha256:")), &mb).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mb.len(),
        "annotations": {"org.opencontainers.image.ref.name": "bench"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

async fn raibid_push(reg: &str, ws: &Path, repo: &str) -> (f64, String) {
    let t = Instant::now();
    let roots = Roots {
        workspace: ws.to_path_buf(),
        target: None,
    };
    let spec = ArtifactSpec {
        paths: vec!["blob.bin".into()],
        when: When::Success,
    };
    let found = collect(
        &roots,
        &spec,
        Caps {
            max_bytes: 1 << 30,
            max_count: 10,
        },
    )
    .unwrap();
    let target = Target {
        registry: reg.to_string(),
        repository: repo.to_string(),
        insecure: true,
        auth: None,
    };
    let set = upload(&target, "bench", "0".repeat(40).as_str(), found, |_| {})
        .await
        .unwrap();
    (t.elapsed().as_secs_f64(), set.files[0].digest.clone())
}

fn skopeo_push(reg: &str, layout: &Path, repo: &str) -> f64 {
    let t = Instant::now();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bench", layout.display()))
        .arg(format!("docker://{reg}/{repo}:bench"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_throughput_of_a_100_mb_file_against_skopeo() {
    image_support::require_tools();
    let reg = Registry::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let ws = tmp.path().join(format!("ws{round}"));
        std::fs::create_dir_all(&ws).unwrap();
        let blob = ws.join("blob.bin");
        let digest = random_file(&blob, round as u64 + 1);
        let layout = tmp.path().join(format!("layout{round}"));
        oci_layout(&layout, &blob, &digest);
        let run_ours = |r: String| {
            let ws = ws.clone();
            let reg = reg.addr.clone();
            async move { raibid_push(&reg, &ws, &r).await }
        };
        let (a, b) = if round % 2 == 0 {
            let a = run_ours(format!("bench/raibid-{round}")).await;
            let b = skopeo_push(&reg.addr, &layout, &format!("bench/skopeo-{round}"));
            (a, b)
        } else {
            let b = skopeo_push(&reg.addr, &layout, &format!("bench/skopeo-{round}"));
            let a = run_ours(format!("bench/raibid-{round}")).await;
            (a, b)
        };
        assert_eq!(a.1, digest, "the uploaded blob is the file");
        let m: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "http://{}/v2/bench/skopeo-{round}/manifests/bench",
                reg.addr
            ))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            m["layers"][0]["digest"],
            digest.as_str(),
            "skopeo's push landed: {m}"
        );
        eprintln!(
            "round {round}: raibid {:.3}s ({:.0} MB/s)  skopeo {:.3}s ({:.0} MB/s)",
            a.0,
            SIZE as f64 / 1e6 / a.0,
            b,
            SIZE as f64 / 1e6 / b
        );
        ours.push(a.0);
        theirs.push(b);
        let _ = std::fs::remove_dir_all(&ws);
        let _ = std::fs::remove_dir_all(&layout);
    }
    let (a, b) = (median(ours), median(theirs));
    eprintln!(
        "median of {ROUNDS}: raibid upload {a:.3}s = {:.0} MB/s; skopeo copy {b:.3}s = {:.0} MB/s; ratio {:.2}",
        SIZE as f64 / 1e6 / a,
        SIZE as f64 / 1e6 / b,
        a / b
    );
}
