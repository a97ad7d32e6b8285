//! Image jobs end to end: submitted through the REST API, claimed by a real agent process serving kind
//! `image`, built with real Buildah (`--storage-driver vfs --isolation chroot`, as root here), tested
//! inside the image, pushed to a real registry (`docker-registry`) and checked with `skopeo inspect`.
//! Images are `FROM scratch` around `/bin/busybox` (busybox-static): nothing is pulled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod image_support;

use image_support::*;
use serde_json::json;
use std::time::Duration;

const AGENT: &str = "img-agent";
const LONG: Duration = Duration::from_secs(180);

const CONTAINERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nARG LITERAL=unset\nRUN printf '%s' \"$LITERAL\" > /literal.txt\nCOPY msg.txt /msg.txt\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_job_builds_tests_inside_the_image_and_pushes() {
    let s = stack().await;
    let reg = Registry::start().await;
    let cache = s.cache_dir();
    s.agent(AGENT, &reg.addr, &cache);
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &[
            ("Containerfile", CONTAINERFILE),
            ("msg.txt", "hello from inside the image\n"),
        ],
    );
    // A value that would be a shell injection if it went through a shell of ours: it is one argv element
    // (`--build-arg LITERAL=...`) and reaches the Containerfile's RUN as a literal value.
    let pwned = format!("/tmp/raibid-pwned-{}", std::process::id());
    let literal = format!("x; touch {pwned}; $(touch {pwned})");
    let id = s
        .submit_ok(image_job(
            &repo,
            json!({
                "name": "team/app",
                "build_args": {"LITERAL": literal},
                "test": {
                    "commands": [
                        "cat /msg.txt",
                        "test \"$(cat /msg.txt)\" = 'hello from inside the image'",
                        ["/bin/sh", "-c", "test \"$GREETING\" = hi"],
                        "cat /literal.txt; echo"
                    ],
                    "env": {"GREETING": "hi"},
                    "timeout": "2m"
                }
            }),
        ))
        .await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{}", s.agent_log(AGENT));
    assert_eq!(j["kind"], "image");
    let sha = j["source"]["sha"].as_str().unwrap().to_string();
    let short = &sha[..12];
    // Phases: each with timestamps, in order.
    let ph = &j["image"]["phases"];
    for p in ["building", "testing", "publishing"] {
        assert!(
            ph[p]["started"].is_string() && ph[p]["finished"].is_string(),
            "{p}: {j}"
        );
    }
    assert!(ph["building"]["finished"].as_str() <= ph["testing"]["started"].as_str());
    assert!(ph["testing"]["finished"].as_str() <= ph["publishing"]["started"].as_str());
    let steps: Vec<&str> = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["clone", "building", "testing", "publishing"]);
    // Pushed: default tags = short sha and branch; the registry has them, with the recorded digest.
    let pushed = j["image"]["pushed"].as_array().unwrap();
    assert_eq!(pushed.len(), 2, "{j}");
    for (p, tag) in pushed.iter().zip([short, "main"]) {
        assert_eq!(p["reference"], format!("{}/team/app:{tag}", reg.addr));
        let digest = p["digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:"), "{p}");
        let inspected = reg.inspect(&format!("team/app:{tag}")).expect("pushed tag");
        assert_eq!(inspected["Digest"], digest);
        let tags: Vec<&str> = inspected["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(
            tags.contains(&short) && tags.contains(&"main"),
            "{inspected}"
        );
    }
    // The testing phase's log carries the file the Containerfile copied in, and only testing lines.
    let testing = s.logs(&id, Some("testing")).await;
    assert!(testing.iter().all(|l| l["step"] == "testing"));
    let text: Vec<&str> = testing
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(text.contains(&"hello from inside the image"), "{text:?}");
    assert!(
        text.contains(&literal.as_str()),
        "the build arg arrived literally: {text:?}"
    );
    assert!(
        !std::path::Path::new(&pwned).exists(),
        "something executed the injected command"
    );
    let building = s.logs(&id, Some("building")).await;
    assert!(building.iter().any(|l| l["line"]
        .as_str()
        .unwrap()
        .contains("buildah build --layers --isolation chroot")));
    // Working containers are gone; the image stays as cache.
    assert!(
        buildah_containers(&cache).is_empty(),
        "{:?}",
        buildah_containers(&cache)
    );
    // Cleanup: requested through the API, done by the agent before its next job.
    let r = s
        .http
        .delete(format!("{}/api/v1/jobs/{id}/images", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let pending = raibid_core::queue::image_cleanup::pending_cleanups(&s.queue)
        .await
        .unwrap();
    assert_eq!(pending, vec![id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_test_fails_in_testing_and_nothing_is_pushed() {
    let s = stack().await;
    let reg = Registry::start().await;
    s.agent(AGENT, &reg.addr, &s.cache_dir());
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &[("Containerfile", CONTAINERFILE), ("msg.txt", "hello\n")],
    );
    let id = s
        .submit_ok(image_job(
            &repo,
            json!({"name": "team/broken", "test": {"commands": ["cat /msg.txt", "echo about to fail; exit 3", "echo never"]}}),
        ))
        .await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["image"]["failed_phase"], "testing", "{j}");
    assert_eq!(j["step"], "testing");
    let reason = j["failure_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("testing: test command 2") && reason.contains("code 3"),
        "{reason}"
    );
    assert!(j["image"]["phases"]["publishing"].is_null(), "{j}");
    assert_eq!(j["image"]["pushed"].as_array().unwrap().len(), 0);
    assert!(
        reg.catalog().await.is_empty(),
        "nothing may be pushed: {:?}",
        reg.catalog().await
    );
    assert!(reg.inspect("team/broken:main").is_none());
    let lines: Vec<String> = s
        .logs(&id, Some("testing"))
        .await
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    assert!(
        lines.contains(&"about to fail".to_string()) && !lines.contains(&"never".to_string()),
        "{lines:?}"
    );
    assert!(buildah_containers(&s.cache_dir()).is_empty());
    // A retry is the same image job again (kind and request carried over, results not).
    let r: serde_json::Value = s
        .http
        .post(format!("{}/api/v1/jobs/{id}/retry", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["kind"], "image", "{r}");
    assert_eq!(r["image"]["request"], j["image"]["request"]);
    assert!(r["image"]["failed_phase"].is_null(), "{r}");
    assert_eq!(
        s.wait_final(r["id"].as_str().unwrap(), LONG).await["image"]["failed_phase"],
        "testing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_containerfile_error_fails_in_building_with_buildahs_message() {
    let s = stack().await;
    let reg = Registry::start().await;
    s.agent(AGENT, &reg.addr, &s.cache_dir());
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY does-not-exist.txt /x\n",
        )],
    );
    let id = s
        .submit_ok(image_job(&repo, json!({"name": "team/bad"})))
        .await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["image"]["failed_phase"], "building", "{j}");
    let building = s.logs(&id, Some("building")).await;
    let text: Vec<&str> = building
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(
        building.iter().any(|l| l["stream"] == "stderr"
            && l["line"].as_str().unwrap().contains("does-not-exist.txt")),
        "Buildah's own message belongs in the building log: {text:?}"
    );
    assert!(
        j["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("building: buildah build exited"),
        "{j}"
    );
    assert!(reg.catalog().await.is_empty());
    assert!(buildah_containers(&s.cache_dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_down_fails_in_publishing_with_a_clear_message() {
    let s = stack().await;
    // Nothing listens on this port.
    let dead = format!("127.0.0.1:{}", raibid_core::testkit::free_port().unwrap());
    s.agent(AGENT, &dead, &s.cache_dir());
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &[("Containerfile", CONTAINERFILE), ("msg.txt", "hi\n")],
    );
    let id = s
        .submit_ok(image_job(
            &repo,
            json!({"name": "team/app", "tags": ["v1"], "test": {"commands": ["cat /msg.txt"]}}),
        ))
        .await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["image"]["failed_phase"], "publishing", "{j}");
    let reason = j["failure_reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("publishing: push of {dead}/team/app:v1 exited"))
            && reason.contains("is the registry"),
        "{reason}"
    );
    let publishing = s.logs(&id, Some("publishing")).await;
    assert!(
        publishing
            .iter()
            .any(|l| l["line"].as_str().unwrap().contains("connection refused")),
        "{publishing:?}"
    );
    assert!(buildah_containers(&s.cache_dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_the_build_leaves_no_buildah_process_or_container() {
    let s = stack().await;
    let reg = Registry::start().await;
    let cache = s.cache_dir();
    s.agent(AGENT, &reg.addr, &cache);
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &[(
            "Containerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"4711\"]\n",
        )],
    );
    let id = s
        .submit_ok(image_job(&repo, json!({"name": "team/slow"})))
        .await;
    s.wait(&id, LONG, |j| j["status"] == "building").await;
    // The RUN step is running inside Buildah's chroot.
    let deadline = std::time::Instant::now() + LONG;
    while processes_mentioning("sleep 4711").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the RUN step never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.cancel(&id).await, 202);
    let j = s.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    assert_eq!(j["image"]["failed_phase"], "building");
    let cache_s = cache.to_string_lossy().to_string();
    assert!(
        processes_mentioning("sleep 4711").is_empty(),
        "{:?}",
        processes_mentioning("sleep 4711")
    );
    assert!(
        processes_mentioning(&cache_s).is_empty(),
        "{:?}",
        processes_mentioning(&cache_s)
    );
    assert!(
        buildah_containers(&cache).is_empty(),
        "{:?}",
        buildah_containers(&cache)
    );
    assert!(reg.catalog().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injection_and_bad_values_are_refused_at_submit_naming_the_field() {
    let s = stack().await;
    let pwned = format!("/tmp/raibid-pwned-submit-{}", std::process::id());
    let repo = "file:///nonexistent";
    for (image, field) in [
        (json!({"name": format!("x; touch {pwned}")}), "image.name"),
        (
            json!({"name": "a", "tags": [format!("$(touch {pwned})")]}),
            "image.tags[0]",
        ),
        (
            json!({"name": "a", "containerfile": "../../etc/passwd"}),
            "image.containerfile",
        ),
        (json!({"name": "a", "context": "/"}), "image.context"),
        (
            json!({"name": "a", "target": "--root=/tmp"}),
            "image.target",
        ),
        (
            json!({"name": "a", "build_args": {"A;B": "1"}}),
            "image.build_args.A;B",
        ),
        (
            json!({"name": "a", "registry": "evil;host"}),
            "image.registry",
        ),
        (
            json!({"name": "a", "secrets": ["$(id)"]}),
            "image.secrets[0]",
        ),
    ] {
        let (code, body) = s.submit(image_job(repo, image.clone())).await;
        assert_eq!(code, 422, "{image} → {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}:")), "{image} → {msg}");
    }
    let (code, body) = s
        .submit(image_job(repo, json!({"name": "a", "tagz": ["x"]})))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("tagz"),
        "{body}"
    );
    let (code, _) = s
        .submit(json!({"repo_url": repo, "ref": "main", "imag": {}}))
        .await;
    assert_eq!(code, 400);
    // Nothing was enqueued, nothing executed.
    assert_eq!(s.queue.stats().await.unwrap().length, 0);
    assert!(!std::path::Path::new(&pwned).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_with_an_image_section_is_handed_over_to_the_image_pool() {
    let s = stack().await;
    let reg = Registry::start().await;
    // Two pools: a Rust agent (no Buildah use) and an image agent; each reads only its kind's stream.
    s.agent_of(
        "rust-agent",
        "rust",
        &reg.addr,
        &s.tmp.path().join("rust-cache"),
    );
    s.agent_of(AGENT, "image", &reg.addr, &s.cache_dir());
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &[
            ("Containerfile", CONTAINERFILE),
            ("msg.txt", "pushed\n"),
            (".raibid.yaml", "name: app\nimage:\n  name: team/pushed\n  tags: [edge]\n  test:\n    commands: ['grep -q pushed /msg.txt']\n"),
        ],
    );
    // What a push webhook enqueues: a Rust job (the dispatcher cannot read the repository's file).
    let id = s
        .submit_ok(serde_json::json!({"repo_url": repo, "ref": "main"}))
        .await;
    let j = s.wait_final(&id, LONG).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["kind"], "rust");
    assert_eq!(j["agent"], "rust-agent");
    assert_eq!(j["pipeline"], "app-handover");
    let lines = s.logs(&id, Some("config")).await;
    let handed = lines
        .iter()
        .filter_map(|l| l["line"].as_str())
        .find_map(|l| {
            l.split("handed over to image job ")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no hand-over line: {lines:?}"));
    // Issue 19 §3: the hand-over is in both records, not only in the log.
    assert_eq!(j["handed_over_to"], handed.as_str(), "{j}");
    let img = s.wait_final(&handed, LONG).await;
    assert_eq!(img["handed_over_from"], id.as_str(), "{img}");
    assert_eq!(img["status"], "succeeded", "{img}\n{}", s.agent_log(AGENT));
    assert_eq!(img["kind"], "image");
    assert_eq!(img["agent"], AGENT);
    assert_eq!(img["pipeline"], "app");
    assert_eq!(img["source"]["sha"], j["source"]["sha"]);
    let pushed = &img["image"]["pushed"][0];
    assert_eq!(
        pushed["reference"],
        format!("{}/team/pushed:edge", reg.addr)
    );
    assert_eq!(
        reg.inspect("team/pushed:edge").unwrap()["Digest"],
        pushed["digest"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_removes_a_jobs_image_and_the_gc_bounds_the_cache() {
    let s = stack().await;
    let reg = Registry::start().await;
    let cache = s.cache_dir();
    s.agent(AGENT, &reg.addr, &cache);
    let dir = s.tmp.path().join("repo");
    let repo = make_repo(
        &dir,
        &[("Containerfile", CONTAINERFILE), ("msg.txt", "a\n")],
    );
    let a = s
        .submit_ok(image_job(
            &repo,
            json!({"name": "team/gc", "publish": false}),
        ))
        .await;
    assert_eq!(s.wait_final(&a, LONG).await["status"], "succeeded");
    std::fs::write(dir.join("msg.txt"), "b\n").unwrap();
    commit(&dir);
    let b = s
        .submit_ok(image_job(
            &repo,
            json!({"name": "team/gc", "publish": false}),
        ))
        .await;
    let jb = s.wait_final(&b, LONG).await;
    assert_eq!(jb["status"], "succeeded", "{jb}");
    assert!(
        jb["image"]["phases"]["publishing"].is_null(),
        "publish: false pushes nothing: {jb}"
    );
    let local = |id: &str| raibid_core::image::local_reference(id);
    let names = buildah_image_names(&cache);
    assert!(
        names.contains(&local(&a)) && names.contains(&local(&b)),
        "{names:?}"
    );
    // Cleanup of job a: requested through the API, carried out by the agent side (here the operator's GC).
    let r = s
        .http
        .delete(format!("{}/api/v1/jobs/{a}/images", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let out = s.image_gc(&cache, &[]);
    assert!(
        out.contains(&format!("removed the image of job {a}")),
        "{out}"
    );
    let names = buildah_image_names(&cache);
    assert!(
        !names.contains(&local(&a)) && names.contains(&local(&b)),
        "{names:?}"
    );
    // The size bound: with 1 byte allowed every job image goes, and the storage shrinks.
    let before = raibid_agent::image::storage::dir_bytes(&cache.join("buildah/storage"));
    let out = s.image_gc(&cache, &[("RAIBID_IMAGE_CACHE_MAX_BYTES", "1")]);
    assert!(out.contains(&format!("removed {}", local(&b))), "{out}");
    assert!(!buildah_image_names(&cache)
        .iter()
        .any(|n| n.starts_with("localhost/raibid-job/")));
    let after = raibid_agent::image::storage::dir_bytes(&cache.join("buildah/storage"));
    assert!(after < before, "GC freed nothing: {before} → {after} bytes");
    // An unknown or non-image job has nothing to clean up.
    let r = s
        .http
        .delete(format!(
            "{}/api/v1/jobs/01J00000000000000000000000/images",
            s.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// The lines of a job's `building` phase.
async fn building_lines(s: &Stack, id: &str) -> Vec<String> {
    s.logs(id, Some("building"))
        .await
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

fn built(lines: &[String]) -> bool {
    lines.iter().any(|l| l.starts_with("$ buildah build"))
}

fn reused(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|l| l.contains("build inputs identical to an earlier build"))
}

/// Build inputs identical to an earlier successful build on this node reuse its image (no `buildah
/// build`; tests still run in it); a changed build arg, another Containerfile and a changed file each
/// build again; an image the GC removed is built again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_build_inputs_reuse_the_image_and_any_change_builds() {
    let s = stack().await;
    let reg = Registry::start().await;
    let cache = s.cache_dir();
    s.agent(AGENT, &reg.addr, &cache);
    let dir = s.tmp.path().join("repo");
    let repo = make_repo(
        &dir,
        &[
            ("Containerfile", CONTAINERFILE),
            ("Containerfile.alt", CONTAINERFILE),
            ("msg.txt", "v1\n"),
        ],
    );
    let run = |image: serde_json::Value| {
        let s = &s;
        let body = image_job(&repo, image);
        async move {
            let id = s.submit_ok(body).await;
            let j = s.wait_final(&id, LONG).await;
            assert_eq!(j["status"], "succeeded", "{j}\n{}", s.agent_log(AGENT));
            let lines = building_lines(s, &id).await;
            (j, lines)
        }
    };
    // The tests inside the image check its content (the job succeeds only if they pass): what a reused
    // image holds is what the inputs say.
    let spec = |literal: &str, file: Option<&str>, msg: &str| {
        let mut v = json!({"name": "team/reuse", "build_args": {"LITERAL": literal},
        "test": {"commands": [
            format!("test \"$(cat /msg.txt)\" = {msg}"),
            format!("test \"$(cat /literal.txt)\" = {literal}")
        ]}});
        if let Some(f) = file {
            v["containerfile"] = json!(f);
        }
        v
    };
    let (a, la) = run(spec("one", None, "v1")).await;
    assert!(built(&la) && !reused(&la), "{la:?}");
    // Unchanged: reused, tested in the reused image, pushed.
    let (b, lb) = run(spec("one", None, "v1")).await;
    assert!(reused(&lb) && !built(&lb), "{lb:?}");
    assert_eq!(b["image"]["image_id"], a["image"]["image_id"]);
    assert_eq!(b["image"]["pushed"].as_array().unwrap().len(), 2, "{b}");
    // A build arg changes: built (and the image holds the new value: its test passes).
    let (c, lc) = run(spec("two", None, "v1")).await;
    assert!(built(&lc) && !reused(&lc), "{lc:?}");
    assert_ne!(c["image"]["image_id"], a["image"]["image_id"]);
    // Another Containerfile (same content): built.
    let (_, ld) = run(spec("one", Some("Containerfile.alt"), "v1")).await;
    assert!(built(&ld) && !reused(&ld), "{ld:?}");
    // A file of the context changes: built, and the image holds the new content.
    std::fs::write(dir.join("msg.txt"), "v2\n").unwrap();
    commit(&dir);
    let (_, le) = run(spec("one", None, "v2")).await;
    assert!(built(&le) && !reused(&le), "{le:?}");
    let (_, lf) = run(spec("one", None, "v2")).await;
    assert!(reused(&lf), "{lf:?}");
    // The GC removed every image: the record alone is not enough, the job builds.
    s.image_gc(&cache, &[("RAIBID_IMAGE_CACHE_MAX_BYTES", "1")]);
    let (_, lg) = run(spec("one", None, "v2")).await;
    assert!(built(&lg) && !reused(&lg), "{lg:?}");
}
