//! Build-matrix commit statuses (issue 23 §1) end to end: real Redis, the real dispatcher and a real
//! agent, Gitea played by the fake in support/ that checks every call against the upstream swagger
//! (Gitea cannot run here). Each cell reports under its own context, `raibid/ci (features=a)`, pending
//! then final; the group reports the combination under the push's own context, `raibid/ci`: pending
//! until every cell ended, then failure because one cell failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::*;

const PIPELINE: &str = "matrix:\n  features: [a, b]\n  fail_fast: false\nsteps:\n  - name: check\n    run: test \"$RAIBID_MATRIX_FEATURES\" != b\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_cell_reports_under_its_context_and_the_group_under_the_push_s() {
    let env = spawn_app(Options::default()).await;
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    let agent = env.start_agent("agent-mx");
    let (s, v) = env
        .gitea_push(&gitea_payload(&url, &sha, "refs/heads/main"), "mx-1")
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let group = env.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(group["status"], "failed", "{group}");
    // Every context's last status, once Gitea took the three finals.
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let mut last: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in env.gitea.calls() {
            if c.path.contains("/statuses/") && c.answered == 201 {
                last.entry(c.body["context"].as_str().unwrap().to_string())
                    .or_default()
                    .push(c.body["state"].as_str().unwrap().to_string());
            }
        }
        let finals = last
            .values()
            .filter(|v| v.last().is_some_and(|s| s != "pending"))
            .count();
        if finals == 3 {
            break last;
        }
        assert!(Instant::now() < deadline, "{last:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        env.gitea.violations().is_empty(),
        "{:?}",
        env.gitea.violations()
    );
    assert_eq!(
        last.keys().cloned().collect::<Vec<_>>(),
        [
            "raibid/ci",
            "raibid/ci (features=a)",
            "raibid/ci (features=b)"
        ],
        "{last:#?}"
    );
    assert_eq!(last["raibid/ci"], ["pending", "failure"], "{last:#?}");
    assert_eq!(
        last["raibid/ci (features=a)"],
        ["pending", "success"],
        "{last:#?}"
    );
    assert_eq!(
        last["raibid/ci (features=b)"],
        ["pending", "failure"],
        "{last:#?}"
    );
    agent.stop().await;
}
