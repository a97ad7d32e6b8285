//! Issue 21 §3 / ADR 0013 with real agent processes and a real Redis: two "nodes" are two groups of
//! agents with their own cache roots and `RAIBID_NODE_NAME`, on one Redis. A repository's next job is
//! routed (when it is published) to the node holding its warm cache when that node has a free agent;
//! with that node busy it starts elsewhere at once; a node's agents killed → its jobs are reclaimed and
//! finish on the other node. Every wait is on a job state or a Redis key, never a fixed sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed and reaped by the support harness when a test ends.
#![allow(clippy::zombie_processes)]

mod support;

use raibid_core::contract;
use raibid_core::job::{Job, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::Env;

/// Start agent `name` on `node`: its own cache root (`<tmp>/cache-<node>`), its node name.
fn node_agent(env: &Env, node: &str, name: &str) -> u32 {
    let cache = env.tmp.path().join(format!("cache-{node}"));
    env.agent(
        name,
        &[
            ("RAIBID_NODE_NAME", node.to_string()),
            ("RAIBID_CACHE_DIR", cache.display().to_string()),
            (
                "RAIBID_SANDBOX_SHARED_DIRS",
                shared(env).display().to_string(),
            ),
            ("HOME", std::env::var("HOME").unwrap_or_default()),
        ],
    )
}

/// A directory every step may write (the marks the blocking pipelines wait on).
fn shared(env: &Env) -> PathBuf {
    let d = env.tmp.path().join("shared");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Wait until `agent`'s heartbeat is in its node's agents set (it is reading the queue).
async fn wait_live(env: &Env, node: &str, agent: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut con = env.queue.redis();
    loop {
        let s: Option<f64> = redis::cmd("ZSCORE")
            .arg(contract::node_agents_key(node))
            .arg(agent)
            .query_async(&mut con)
            .await
            .unwrap();
        if s.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {agent} never beat on node {node}: {}",
            env.agent_log(agent)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stream a job's current (or last) entry was published on.
async fn stream_of(env: &Env, id: &str) -> String {
    let mut con = env.queue.redis();
    redis::cmd("HGET")
        .arg(contract::job_key(id))
        .arg("stream")
        .query_async::<Option<String>>(&mut con)
        .await
        .unwrap()
        .unwrap_or_default()
}

fn node_of(job: &Job) -> String {
    let agent = job.agent.clone().unwrap_or_default();
    agent.split('-').next().unwrap_or_default().to_string()
}

async fn run(env: &Env, repo: &str) -> Job {
    let id = env.submit(repo).await;
    let j = env.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(j.status, Status::Succeeded, "{}", env.agent_log("a-1"));
    j
}

/// A pipeline that passes at once on its first run and, on every later run, waits for `<shared>/go`.
fn blocking_pipeline(shared: &Path, tag: &str) -> String {
    let first = shared.join(format!("{tag}-first-done"));
    let go = shared.join("go");
    format!(
        "steps:\n  - name: t\n    run: if [ -e {f} ]; then while [ ! -e {g} ]; do sleep 0.05; done; fi; touch {f}\n",
        f = first.display(),
        g = go.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_push_runs_on_the_node_holding_the_warm_cache() {
    let env = support::env(None).await;
    for name in ["a-1", "a-2"] {
        node_agent(&env, "a", name);
    }
    for name in ["b-1", "b-2"] {
        node_agent(&env, "b", name);
    }
    for (node, name) in [("a", "a-1"), ("a", "a-2"), ("b", "b-1"), ("b", "b-2")] {
        wait_live(&env, node, name).await;
    }
    let pipeline = "steps:\n  - name: t\n    run: \"true\"\n";
    let (mut hits, mut routed, mut firsts) = (0, 0, std::collections::BTreeMap::new());
    const N: usize = 20;
    for i in 0..N {
        let repo = support::make_repo(&env.tmp.path().join(format!("repo-{i}")), pipeline);
        let first = run(&env, &repo).await;
        *firsts.entry(node_of(&first)).or_insert(0) += 1;
        let second = run(&env, &repo).await;
        if node_of(&second) == node_of(&first) {
            hits += 1;
        }
        if stream_of(&env, &second.id).await == contract::node_jobs_stream(&node_of(&first)) {
            routed += 1;
        }
    }
    eprintln!("warm hits: {hits}/{N} (routed to the node stream: {routed}/{N}); first pushes by node: {firsts:?}");
    assert!(
        hits * 100 >= N * 95,
        "second pushes on the node with the warm cache: {hits}/{N}"
    );
    assert!(routed * 100 >= N * 95, "routed: {routed}/{N}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_does_not_delay_the_job() {
    let env = support::env(None).await;
    let sh = shared(&env);
    node_agent(&env, "a", "a-1");
    wait_live(&env, "a", "a-1").await;
    let warm = support::make_repo(
        &env.tmp.path().join("warm"),
        "steps:\n  - name: t\n    run: \"true\"\n",
    );
    let blocker = support::make_repo(
        &env.tmp.path().join("blocker"),
        &blocking_pipeline(&sh, "blocker"),
    );
    // Both repositories warm on node a (its only agent ran them).
    assert_eq!(node_of(&run(&env, &warm).await), "a");
    assert_eq!(node_of(&run(&env, &blocker).await), "a");
    node_agent(&env, "b", "b-1");
    wait_live(&env, "b", "b-1").await;
    // Node a's only agent busy with the blocker's second run (routed to node a: warm, free).
    let busy = env.submit(&blocker).await;
    let busy_job = env
        .wait(&busy, Duration::from_secs(30), |j| {
            j.status == Status::Running
        })
        .await;
    assert_eq!(busy_job.agent.as_deref(), Some("a-1"));
    assert_eq!(
        stream_of(&env, &busy).await,
        contract::node_jobs_stream("a")
    );
    // The warm repository's next push: node a holds its cache but has no free agent → shared stream,
    // started by node b within the warm-claim latency.
    let id = env.submit(&warm).await;
    let j = env
        .wait(&id, Duration::from_secs(30), |j| j.status.is_final())
        .await;
    assert_eq!(j.status, Status::Succeeded);
    assert_eq!(j.agent.as_deref(), Some("b-1"));
    assert_eq!(stream_of(&env, &id).await, contract::keys::JOBS_STREAM);
    let latency = j.claim_latency_secs().unwrap();
    eprintln!(
        "busy warm node: started on the other node after {:.1} ms",
        latency * 1000.0
    );
    assert!(latency < 1.0, "claim latency {latency} s");
    // It did not wait for node a.
    assert_eq!(env.job(&busy).await.status, Status::Running);
    std::fs::write(sh.join("go"), "").unwrap();
    assert_eq!(
        env.wait_final(&busy, Duration::from_secs(30)).await.status,
        Status::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_jobs_are_reclaimed_and_finish_elsewhere() {
    let env = support::env(None).await;
    let sh = shared(&env);
    let a1 = node_agent(&env, "a", "a-1");
    wait_live(&env, "a", "a-1").await;
    let repo = support::make_repo(
        &env.tmp.path().join("repo"),
        &blocking_pipeline(&sh, "repo"),
    );
    assert_eq!(node_of(&run(&env, &repo).await), "a");
    node_agent(&env, "b", "b-1");
    wait_live(&env, "b", "b-1").await;
    // Routed to node a and running there; then node a's agent dies.
    let id = env.submit(&repo).await;
    env.wait(&id, Duration::from_secs(30), |j| {
        j.status == Status::Running
    })
    .await;
    assert_eq!(stream_of(&env, &id).await, contract::node_jobs_stream("a"));
    std::process::Command::new("kill")
        .args(["-9", &a1.to_string()])
        .status()
        .unwrap();
    // The dispatcher's reaper (here: the test) reclaims the expired lease onto the shared stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = env
            .queue
            .reap("reaper", Duration::from_secs(30))
            .await
            .unwrap();
        if r.iter().any(|(j, _)| j == &id) {
            break;
        }
        assert!(Instant::now() < deadline, "never reclaimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let j = env
        .wait(&id, Duration::from_secs(30), |j| {
            j.status == Status::Running && j.agent.as_deref() == Some("b-1")
        })
        .await;
    assert_eq!(j.attempt, 2);
    std::fs::write(sh.join("go"), "").unwrap();
    let j = env.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(j.status, Status::Succeeded);
    assert_eq!(j.agent.as_deref(), Some("b-1"));
    // Both streams' lag exact: nothing left undelivered or pending.
    for stream in [
        contract::keys::JOBS_STREAM.to_string(),
        contract::node_jobs_stream("a"),
    ] {
        let mut con = env.queue.redis();
        let pending: (u64, Option<String>, Option<String>, Option<redis::Value>) =
            redis::cmd("XPENDING")
                .arg(&stream)
                .arg(contract::keys::AGENTS_GROUP)
                .query_async(&mut con)
                .await
                .unwrap();
        assert_eq!(pending.0, 0, "{stream} pending");
    }
}
