//! Issue 20 §2–§3: the GPU kind on a machine without a GPU (this one). The real agent binary, real
//! Redis, real git; the GPU itself is a fixture: device nodes as files in a directory the agent is
//! pointed at, and `nvidia-smi` as a script printing the documented `nvidia-smi -q` layout (NVIDIA's
//! nvidia-smi documentation, "-q, --query": `Driver Version`, `CUDA Version`, then per GPU its
//! `Product Name` and `GPU UUID`). On a GPU host `scripts/gpu-check.sh` runs the same path for real.

mod support;

use raibid_core::job::{Job, JobKind, Source};
use raibid_core::queue::Enqueued;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const UUID: &str = "GPU-5c0ba7e2-4a1b-3c9d-8e7f-0123456789ab";

/// A fixture GPU: `<dir>/dev/nvidia0`, `nvidiactl`, and `<dir>/nvidia-smi`.
fn fixture_gpu(dir: &Path) -> (PathBuf, PathBuf) {
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    for n in ["nvidia0", "nvidiactl", "nvidia-uvm"] {
        std::fs::write(dev.join(n), "").unwrap();
    }
    let smi = dir.join("nvidia-smi");
    std::fs::write(
        &smi,
        format!(
            "#!/bin/sh\n[ \"$1\" = -q ] || exit 2\ncat <<'EOF'\n\n==============NVSMI LOG==============\n\nDriver Version                            : 580.95.05\nCUDA Version                              : 13.0\n\nAttached GPUs                             : 1\nGPU 0000000F:01:00.0\n    Product Name                          : NVIDIA GB10\n    GPU UUID                              : {UUID}\n    Minor Number                          : 0\nEOF\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dev, smi)
}

async fn submit_kind(e: &Env, repo_url: &str, kind: JobKind) -> String {
    let source: Source = serde_json::from_value(serde_json::json!({
        "repo_url": repo_url,
        "ref": "main",
        "sha": null,
        "trigger": {"kind": "api", "actor": "test"},
        "delivery_id": null,
        "forge_repo": null,
    }))
    .unwrap();
    let mut job = Job::new(source, chrono::Utc::now());
    job.kind = kind;
    match e.queue.enqueue(job, None).await.unwrap() {
        Enqueued::New(j) => j.id.to_string(),
        Enqueued::Duplicate(id) => id.to_string(),
    }
}

/// An agent told to serve `gpu` on a host without one exits 1 and says what it looked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gpu_agent_without_a_gpu_refuses_to_start_saying_what_it_looked_for() {
    let e = env(None).await;
    let empty = e.tmp.path().join("no-dev");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = e.agent_cmd("agent-nogpu", &[("RAIBID_AGENT_KINDS", "gpu".into())]);
    cmd.arg("--gpu-device-dir").arg(&empty);
    let status = cmd.status().unwrap();
    let log = e.agent_log("agent-nogpu");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("found no GPU") && log.contains("nvidia<N>"),
        "the refusal says what it looked for: {log}"
    );
}

/// Routing: a `gpu` job never reaches a Rust agent and a Rust job never reaches a GPU agent; a GPU
/// agent runs the GPU job with the GPU in its record and in its steps' environment and sandbox; a
/// Rust job whose `.raibid.yaml` says `gpu: true` is handed over to the GPU pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_jobs_reach_only_gpu_agents_which_record_and_expose_their_gpu() {
    let e = env(None).await;
    let (dev, smi) = fixture_gpu(&e.tmp.path().join("gpu"));
    let gpu_repo = make_repo(
        &e.tmp.path().join("gpu-repo"),
        "steps:\n  - name: probe\n    run: echo \"visible=$CUDA_VISIBLE_DEVICES nv=$NVIDIA_VISIBLE_DEVICES\"; test -e /dev/nvidia0 && echo device-present\n",
    );
    let plain = make_repo(
        &e.tmp.path().join("plain"),
        "steps:\n  - name: hi\n    run: echo plain\n",
    );
    let flagged = make_repo(
        &e.tmp.path().join("flagged"),
        "gpu: true\nsteps:\n  - name: probe\n    run: echo \"visible=$CUDA_VISIBLE_DEVICES\"\n",
    );
    // A Rust agent alone: it runs Rust jobs and leaves the GPU job queued.
    e.agent("agent-rust", &[("RAIBID_AGENT_KINDS", "rust".into())]);
    wait_log(
        &e.log_path("agent-rust"),
        "agent started",
        Duration::from_secs(20),
    );
    let g = submit_kind(&e, &gpu_repo, JobKind::Gpu).await;
    let r = e.submit(&plain).await;
    let rj = e.wait_final(&r, Duration::from_secs(60)).await;
    assert_eq!(rj.status.as_str(), "succeeded");
    assert_eq!(rj.agent.as_deref(), Some("agent-rust"));
    let gj = e.job(&g).await;
    assert_eq!(gj.status.as_str(), "queued", "a Rust agent took a GPU job");
    assert!(gj.agent.is_none());
    // The GPU agent (with the fixture GPU) takes it.
    let mut cmd = e.agent_cmd("agent-gpu", &[("RAIBID_AGENT_KINDS", "gpu".into())]);
    cmd.arg("--gpu-device-dir")
        .arg(&dev)
        .arg("--nvidia-smi")
        .arg(&smi);
    e.start(cmd);
    let gj = e.wait_final(&g, Duration::from_secs(60)).await;
    let log: Vec<String> = e.logs(&g).await.into_iter().map(|l| l.line).collect();
    assert_eq!(
        gj.status.as_str(),
        "succeeded",
        "{log:?}\n{}",
        e.agent_log("agent-gpu")
    );
    assert_eq!(gj.agent.as_deref(), Some("agent-gpu"));
    assert_eq!(gj.kind, JobKind::Gpu);
    let gpus = gj.gpu.clone().expect("the record names the GPU");
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0].uuid, UUID);
    assert_eq!(gpus[0].name, "NVIDIA GB10");
    assert_eq!(gpus[0].driver_version, "580.95.05");
    assert_eq!(gpus[0].cuda_version, "13.0");
    assert!(
        log.iter()
            .any(|l| l == &format!("visible={UUID} nv={UUID}")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l == "device-present"), "{log:?}");
    // Rust jobs keep going to the Rust agent with the GPU agent idle beside it.
    for _ in 0..3 {
        let r = e.submit(&plain).await;
        let rj = e.wait_final(&r, Duration::from_secs(60)).await;
        assert_eq!(
            rj.agent.as_deref(),
            Some("agent-rust"),
            "a GPU agent took a Rust job"
        );
    }
    // `gpu: true` in .raibid.yaml: the Rust job hands over to the GPU pool.
    let h = e.submit(&flagged).await;
    let hj = e.wait_final(&h, Duration::from_secs(60)).await;
    let hlog: Vec<String> = e.logs(&h).await.into_iter().map(|l| l.line).collect();
    assert_eq!(hj.status.as_str(), "succeeded", "{hlog:?}");
    assert_eq!(hj.agent.as_deref(), Some("agent-rust"));
    let gid = hlog
        .iter()
        .find_map(|l| {
            l.split("handed over to gpu job ")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("no hand-over line: {hlog:?}"));
    let gj = e.wait_final(&gid, Duration::from_secs(60)).await;
    assert_eq!(gj.status.as_str(), "succeeded");
    assert_eq!(gj.kind, JobKind::Gpu);
    assert_eq!(gj.agent.as_deref(), Some("agent-gpu"));
}

/// Issue 20 §1: the hand-over is an explicit transition of the config phase and carries the patch: a
/// patched Rust job whose `.raibid.yaml` says `gpu: true` becomes a GPU job that runs the commit with
/// the patch applied (before the lifecycle copied it, the GPU job found its patch gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patched_job_is_handed_over_to_the_gpu_pool_with_its_patch() {
    use sha2::Digest;
    let e = env(None).await;
    let (dev, smi) = fixture_gpu(&e.tmp.path().join("gpu"));
    let repo = make_repo(
        &e.tmp.path().join("patched"),
        "gpu: true\nsteps:\n  - name: probe\n    run: echo unpatched\n",
    );
    let diff = "--- a/.raibid.yaml\n+++ b/.raibid.yaml\n@@ -1,4 +1,4 @@\n gpu: true\n steps:\n   - name: probe\n-    run: echo unpatched\n+    run: echo patched-on-$CUDA_VISIBLE_DEVICES\n";
    let source: Source = serde_json::from_value(serde_json::json!({
        "repo_url": repo,
        "ref": "main",
        "sha": null,
        "trigger": {"kind": "api", "actor": "test"},
        "delivery_id": null,
        "forge_repo": null,
        "patch": {"bytes": diff.len(), "sha256": hex::encode(sha2::Sha256::digest(diff.as_bytes()))},
    }))
    .unwrap();
    let job = Job::new(source, chrono::Utc::now());
    let mut con = e.queue.redis();
    let _: () = redis::cmd("SET")
        .arg(raibid_core::contract::job_patch_key(&job.id))
        .arg(diff)
        .query_async(&mut con)
        .await
        .unwrap();
    let id = match e.queue.enqueue(job, None).await.unwrap() {
        Enqueued::New(j) => j.id.to_string(),
        Enqueued::Duplicate(id) => id.to_string(),
    };
    e.agent("agent-rust", &[("RAIBID_AGENT_KINDS", "rust".into())]);
    let mut cmd = e.agent_cmd("agent-gpu", &[("RAIBID_AGENT_KINDS", "gpu".into())]);
    cmd.arg("--gpu-device-dir")
        .arg(&dev)
        .arg("--nvidia-smi")
        .arg(&smi);
    e.start(cmd);
    let hj = e.wait_final(&id, Duration::from_secs(60)).await;
    let hlog: Vec<String> = e.logs(&id).await.into_iter().map(|l| l.line).collect();
    assert_eq!(hj.status.as_str(), "succeeded", "{hlog:?}");
    let steps: Vec<&str> = hj.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["clone", "patch", "config"], "{hlog:?}");
    let gid = hlog
        .iter()
        .find_map(|l| {
            l.split("handed over to gpu job ")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("no hand-over line: {hlog:?}"));
    let gj = e.wait_final(&gid, Duration::from_secs(60)).await;
    let glog: Vec<String> = e.logs(&gid).await.into_iter().map(|l| l.line).collect();
    assert_eq!(
        gj.status.as_str(),
        "succeeded",
        "{glog:?}\n{}",
        e.agent_log("agent-gpu")
    );
    assert_eq!(gj.kind, JobKind::Gpu);
    assert_eq!(
        gj.source.patch, hj.source.patch,
        "the record keeps the patch"
    );
    assert!(
        glog.iter().any(|l| l == &format!("patched-on-{UUID}")),
        "the GPU job ran the patched pipeline: {glog:?}"
    );
}
