//! Artifacts end to end (issue 23 §2) against a real registry (`docker-registry`, started here like the
//! image tests do): a real agent process builds a small real crate's release binary in its sandbox and
//! uploads it; the dispatcher (in process) lists it, streams it back bit-identical (digest), serves it on
//! the public page's token, and deletes the manifest with `cleanup` (MCP). The caps, the path refusals
//! (a hostile step planting a symlink to the agent's credential file) and a registry outage each fail
//! only the `artifacts` step, the build step's result kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod image_support;

use image_support::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

const AGENT: &str = "img-agent";
const LONG: Duration = Duration::from_secs(300);

const CARGO_TOML: &str =
    "[package]\nname = \"hello-art\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n";
const MAIN_RS: &str = "fn main() {\n    println!(\"hello from an artifact\");\n}\n";

async fn stack_for(reg: &str) -> Stack {
    let reg = reg.to_string();
    stack_with(move |s| {
        s.intake.artifact_registry = raibid_dispatcher::artifacts::RegistryAccess {
            registry: Some(reg),
            insecure: true,
            ..Default::default()
        };
    })
    .await
}

fn job_of(repo: &str) -> Value {
    json!({"repo_url": repo, "ref": "main"})
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

async fn get(s: &Stack, path: &str) -> reqwest::Response {
    s.http
        .get(format!("{}{path}", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

fn step<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {j}"))
}

async fn mcp(s: &Stack, tool: &str, args: Value) -> Value {
    let r: Value = s
        .http
        .post(format!("{}/mcp", s.base))
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_binary_is_uploaded_listed_downloaded_bit_identical_and_gone_after_cleanup() {
    let reg = Registry::start().await;
    let s = stack_for(&reg.addr).await;
    let cache = s.cache_dir();
    s.agent_of(AGENT, "rust", &reg.addr, &cache);
    let repo = make_repo(
        &s.tmp.path().join("hello-art"),
        &[
            ("Cargo.toml", CARGO_TOML),
            ("src/main.rs", MAIN_RS),
            (
                ".raibid.yaml",
                "steps:\n  - name: build\n    run: cargo build --release --offline\nartifacts:\n  paths: [target/release/hello-art]\n",
            ),
        ],
    );
    let id = s.submit_ok(job_of(&repo)).await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{}", s.agent_log(AGENT));
    assert_eq!(step(&j, "artifacts")["status"], "succeeded");
    let sha = j["source"]["sha"].as_str().unwrap().to_string();
    let art = &j["artifacts"];
    assert_eq!(art["repository"], "local/hello-art/artifacts", "{art}");
    assert_eq!(art["tag"], id.as_str());
    let file = &art["files"][0];
    assert_eq!(file["name"], "target/release/hello-art");
    let digest = file["digest"].as_str().unwrap().to_string();
    // The binary the build wrote (in the slot's target directory, node cache) is what was recorded.
    let built = walk_find(&cache.join("targets"), "release/hello-art").expect("built binary");
    let bytes = std::fs::read(&built).unwrap();
    assert_eq!(sha256(&bytes), digest);
    assert_eq!(file["size"].as_u64().unwrap(), bytes.len() as u64);
    // The registry has the manifest, tagged with the job id, its annotations naming job, commit, files.
    let manifest: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/local/hello-art/artifacts/manifests/{id}",
            reg.addr
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["annotations"]["dev.raibid.job"], id.as_str());
    assert_eq!(manifest["annotations"]["dev.raibid.commit"], sha.as_str());
    assert!(manifest["annotations"]["dev.raibid.files"]
        .as_str()
        .unwrap()
        .contains(&digest));
    assert_eq!(manifest["layers"][0]["digest"], digest.as_str());
    // REST list and download: bit-identical.
    let list: Value = get(&s, &format!("/api/v1/jobs/{id}/artifacts"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["files"][0]["digest"], digest.as_str(), "{list}");
    let url = list["files"][0]["download_url"].as_str().unwrap();
    assert!(url.ends_with(&format!(
        "/api/v1/jobs/{id}/artifacts/target/release/hello-art"
    )));
    let r = get(
        &s,
        &format!("/api/v1/jobs/{id}/artifacts/target/release/hello-art"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let got = r.bytes().await.unwrap();
    assert_eq!(sha256(&got), digest);
    assert_eq!(&got[..], &bytes[..]);
    // By digest too.
    let got = get(&s, &format!("/api/v1/jobs/{id}/artifacts/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
    // Without the token: 401; an unknown name: 404 naming it.
    let r = s
        .http
        .get(format!(
            "{}/api/v1/jobs/{id}/artifacts/target/release/hello-art",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = get(&s, &format!("/api/v1/jobs/{id}/artifacts/nope")).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no artifact `nope`"));
    // The public page links it, and the link serves it with the page's token only.
    let token = raibid_dispatcher::public::job_token(TOKEN, &id);
    let page = s
        .http
        .get(format!("{}/public/jobs/{id}/{token}", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let link = format!("/public/jobs/{id}/{token}/artifacts/target/release/hello-art");
    assert!(page.contains(&link), "{page}");
    let got = s
        .http
        .get(format!("{}{link}", s.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
    let r = s
        .http
        .get(format!(
            "{}/public/jobs/{id}/{}/artifacts/target/release/hello-art",
            s.base,
            "0".repeat(32)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // MCP: names, sizes, digests and the URL, never bytes.
    let out = mcp(&s, "list_artifacts", json!({"job_id": id})).await;
    let sc = &out["structuredContent"];
    assert_eq!(sc["files"][0]["digest"], digest.as_str(), "{out}");
    assert_eq!(sc["files"][0]["download_url"], url);
    assert!(
        out.to_string().len() < 4096,
        "no bytes in the answer: {out}"
    );
    // Retention: a second job's record expires (deleted here as the TTL would); the sweeper deletes its
    // manifest and forgets it, and leaves the first job's alone.
    let id2 = s.submit_ok(job_of(&repo)).await;
    let j2 = s.wait_final(&id2, LONG).await;
    assert_eq!(j2["status"], "succeeded", "{j2}");
    let d2 = j2["artifacts"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest_status = |d: String| {
        let addr = reg.addr.clone();
        async move {
            reqwest::Client::new()
                .get(format!(
                    "http://{addr}/v2/local/hello-art/artifacts/manifests/{d}"
                ))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(manifest_status(d2.clone()).await, 200);
    let _: i64 = redis::cmd("DEL")
        .arg(raibid_core::contract::job_key(&id2))
        .query_async(&mut s.queue.redis())
        .await
        .unwrap();
    assert_eq!(
        raibid_dispatcher::artifacts::sweep(&s.state).await.unwrap(),
        1
    );
    assert_eq!(manifest_status(d2).await, 404, "gone with its record");
    assert_eq!(
        raibid_dispatcher::artifacts::sweep(&s.state).await.unwrap(),
        0
    );
    assert_eq!(
        manifest_status(art["manifest_digest"].as_str().unwrap().to_string()).await,
        200,
        "the first job's record is still there, and so are its artifacts"
    );
    // cleanup: the record goes, and the manifest with it.
    let out = mcp(&s, "cleanup", json!({"job_id": id})).await;
    assert_eq!(out["isError"], false, "{out}");
    let code = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/local/hello-art/artifacts/manifests/{}",
            reg.addr,
            art["manifest_digest"].as_str().unwrap()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(code, 404, "the manifest is gone after cleanup");
    assert!(
        reg.inspect(&format!("local/hello-art/artifacts:{id}"))
            .is_none(),
        "the tag is gone too"
    );
    let idx: Vec<String> = redis::cmd("ZRANGE")
        .arg("raibid:artifacts")
        .arg(0)
        .arg(-1)
        .query_async(&mut s.queue.redis())
        .await
        .unwrap();
    assert!(idx.is_empty(), "{idx:?}");
}

fn walk_find(dir: &std::path::Path, suffix: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(f) = walk_find(&p, suffix) {
                return Some(f);
            }
        } else if ft.is_file() && p.to_string_lossy().ends_with(suffix) {
            return Some(p);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_symlink_to_the_agents_credential_file_is_refused_and_nothing_is_uploaded() {
    let reg = Registry::start().await;
    let s = stack_for(&reg.addr).await;
    let cache = s.cache_dir();
    // The agent's registry password lives in a file the sandbox hides from steps; a hostile step can
    // still plant a link to its path, hoping the agent reads it for it.
    let secret = "registry-password-do-not-leak-7f3a";
    let pw = s.tmp.path().join("registry-password");
    std::fs::write(&pw, secret).unwrap();
    let pw_s = pw.to_string_lossy().to_string();
    s.agent_env(
        AGENT,
        "rust",
        &reg.addr,
        &cache,
        &[
            ("RAIBID_REGISTRY_USERNAME", "push"),
            ("RAIBID_REGISTRY_PASSWORD_FILE", pw_s.as_str()),
        ],
    );
    let yaml = format!(
        "steps:\n  - name: plant\n    run: mkdir -p out && ln -s {pw_s} out/tool && mkdir -p d && ln -s / d/root\nartifacts:\n  paths: ['out/*']\n  when: always\n"
    );
    let repo = make_repo(
        &s.tmp.path().join("hostile"),
        &[(".raibid.yaml", yaml.as_str())],
    );
    let id = s.submit_ok(job_of(&repo)).await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "failed", "{j}\n{}", s.agent_log(AGENT));
    assert_eq!(step(&j, "plant")["status"], "succeeded", "{j}");
    assert_eq!(step(&j, "artifacts")["status"], "failed", "{j}");
    let reason = j["failure_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("artifacts:") && reason.contains("symbolic link"),
        "{reason}"
    );
    let lines = s.logs(&id, Some("artifacts")).await;
    assert!(
        lines.iter().any(|l| l["line"]
            .as_str()
            .unwrap()
            .contains("out/tool` is a symbolic link")),
        "{lines:?}"
    );
    assert!(j.get("artifacts").is_none(), "{j}");
    assert!(
        reg.catalog().await.is_empty(),
        "nothing reached the registry"
    );
    // Through a linked directory, named literally: refused the same way.
    let yaml = "steps:\n  - name: plant\n    run: mkdir -p d && ln -s / d/root\nartifacts: [d/root/etc/hostname]\n";
    let repo2 = make_repo(&s.tmp.path().join("hostile2"), &[(".raibid.yaml", yaml)]);
    let id = s.submit_ok(job_of(&repo2)).await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["failure_reason"]
        .as_str()
        .unwrap()
        .contains("`d/root` is a symbolic link"));
    // Absolute and `..` never get past the config step, which names the key.
    for (bad, why) in [("/etc/passwd", "absolute"), ("../../x", "`..`")] {
        let yaml = format!("steps:\n  - name: a\n    run: 'true'\nartifacts: ['{bad}']\n");
        let dir = s.tmp.path().join(format!("bad{}", why.len()));
        let repo = make_repo(&dir, &[(".raibid.yaml", yaml.as_str())]);
        let id = s.submit_ok(job_of(&repo)).await;
        let j = s.wait_final(&id, LONG).await;
        assert_eq!(j["status"], "failed");
        assert_eq!(j["step"], "config", "{j}");
        let r = j["failure_reason"].as_str().unwrap();
        assert!(r.contains("artifacts.paths[0]") && r.contains(why), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_caps_refuse_with_a_clear_message_and_keep_the_other_results() {
    let reg = Registry::start().await;
    let s = stack_for(&reg.addr).await;
    let cache = s.cache_dir();
    s.agent_env(
        AGENT,
        "rust",
        &reg.addr,
        &cache,
        &[
            ("RAIBID_ARTIFACTS_MAX_BYTES", "1000"),
            ("RAIBID_ARTIFACTS_MAX_COUNT", "2"),
        ],
    );
    let yaml = "steps:\n  - name: make\n    run: mkdir -p out && head -c 600 /dev/zero > out/a && head -c 600 /dev/zero > out/b\nartifacts: ['out/*']\n";
    let repo = make_repo(&s.tmp.path().join("big"), &[(".raibid.yaml", yaml)]);
    let id = s.submit_ok(job_of(&repo)).await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(step(&j, "make")["status"], "succeeded");
    assert_eq!(step(&j, "artifacts")["status"], "failed");
    let r = j["failure_reason"].as_str().unwrap();
    assert!(
        r.contains("1200 bytes")
            && r.contains("cap is 1000 bytes")
            && r.contains("RAIBID_ARTIFACTS_MAX_BYTES"),
        "{r}"
    );
    let yaml = "steps:\n  - name: make\n    run: mkdir -p out && touch out/a out/b out/c\nartifacts: ['out/*']\n";
    let repo = make_repo(&s.tmp.path().join("many"), &[(".raibid.yaml", yaml)]);
    let id = s.submit_ok(job_of(&repo)).await;
    let j = s.wait_final(&id, LONG).await;
    let r = j["failure_reason"].as_str().unwrap();
    assert!(
        r.contains("cap is 2 files") && r.contains("RAIBID_ARTIFACTS_MAX_COUNT"),
        "{r}"
    );
    assert!(reg.catalog().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_outage_fails_only_the_artifacts_step() {
    // A registry address where nothing listens (the port is free).
    let down = format!("127.0.0.1:{}", raibid_core::testkit::free_port().unwrap());
    let s = stack_for(&down).await;
    let cache = s.cache_dir();
    s.agent_of(AGENT, "rust", &down, &cache);
    let yaml = "steps:\n  - name: make\n    run: mkdir -p out && echo hi > out/a\n  - name: check\n    run: test -f out/a\nartifacts: [out/a]\n";
    let repo = make_repo(&s.tmp.path().join("outage"), &[(".raibid.yaml", yaml)]);
    let id = s.submit_ok(job_of(&repo)).await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "failed", "{j}");
    for st in ["clone", "config", "make", "check"] {
        assert_eq!(step(&j, st)["status"], "succeeded", "{st}: {j}");
    }
    assert_eq!(step(&j, "artifacts")["status"], "failed");
    assert_eq!(j["step"], "artifacts");
    let r = j["failure_reason"].as_str().unwrap();
    assert!(r.starts_with("artifacts: pushing `out/a` to"), "{r}");
    let lines = s.logs(&id, Some("artifacts")).await;
    assert!(
        lines.iter().any(|l| l["line"]
            .as_str()
            .unwrap()
            .contains(&format!("to {down}/local/outage/artifacts"))),
        "{lines:?}"
    );
}
