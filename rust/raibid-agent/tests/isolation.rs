//! What a build step can reach and leave behind (issue 8 §5, §9, §10): the real agent binary, real
//! Redis (with a password), real steps.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed and reaped by the support harness when a test ends.
#![allow(clippy::zombie_processes)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_setsid_grandchild_holding_stdout_neither_keeps_the_job_running_nor_survives_it() {
    let e = env(None).await;
    // The step's shell starts a shell that double-forks `setsid sleep 600` (stdout inherited: the
    // pipe stays open) and exits once the grandchild is in its own session.
    let repo = make_repo(
        &e.tmp.path().join("orphan"),
        "steps:\n  - name: daemonize\n    run: |\n      sh -c 'setsid sh -c \"touch up; exec sleep 600\" &'\n      while [ ! -e up ]; do sleep 0.05; done\n      echo main-exited\n",
    );
    e.agent("agent-orphan", &[]);
    let id = e.submit(&repo).await;
    let started = Instant::now();
    let j = e.wait_final(&id, Duration::from_secs(20)).await;
    let left = pids_with_marker(&id);
    kill_pids(&left);
    assert_eq!(j.status.as_str(), "succeeded", "{:?}", j.failure_reason);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the job ended when its main process exited"
    );
    assert!(
        left.is_empty(),
        "processes of the job survived it: {left:?}"
    );
    let lines = e.logs(&id).await;
    assert!(lines.iter().any(|l| l.line == "main-exited"));
}

/// Base64 of a value, so that the step script holds no secret in clear (its own command line would
/// then "leak" it).
fn b64(s: &str) -> String {
    let out = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_finds_none_of_the_agents_secrets_and_only_its_scoped_ones() {
    const REDIS_PASSWORD: &str = "redis-pw-5ad1c0ffee";
    const GIT_TOKEN: &str = "git-token-77b0deadbeef";
    const SCOPED: &str = "scoped-value-2f9c";
    const UNSCOPED: &str = "unscoped-value-81e4";
    let e = env(Some(REDIS_PASSWORD)).await;
    // The step user must be able to reach the workspace root below the temp dir.
    std::fs::set_permissions(e.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secrets = e.tmp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    let url_file = secrets.join("redis-url");
    std::fs::write(&url_file, e.redis.url()).unwrap();
    let token_file = secrets.join("git-token");
    std::fs::write(&token_file, GIT_TOKEN).unwrap();
    for f in [&url_file, &token_file] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Search every process's environment and command line, the secret files and the step's own
    // environment for the agent's secrets; then check the scoped secret arrived.
    let glob = secrets.join("*");
    let step = leak_search_step(
        &[REDIS_PASSWORD, GIT_TOKEN, UNSCOPED],
        &[&url_file, &token_file, &glob],
        SCOPED,
    );
    let yaml = format!(
        "secrets: [SCOPED_ONE]\nsteps:\n  - name: search\n    run: |\n{step}      test \"$SCOPED_ONE\" = \"$(echo {} | base64 -d)\" && echo scoped-secret-ok\n",
        b64(SCOPED)
    );
    let repo = make_repo(&e.tmp.path().join("searcher"), &yaml);
    let other = make_repo(
        &e.tmp.path().join("other"),
        "secrets: [UNSCOPED_ONE]\nsteps:\n  - name: use\n    run: echo \"$UNSCOPED_ONE\" | rev\n",
    );
    let mut cmd = e.agent_cmd(
        "agent-secrets",
        &[
            ("RAIBID_STEP_USER", "nobody".to_string()),
            ("RAIBID_REDIS_URL_FILE", url_file.display().to_string()),
            ("RAIBID_GIT_TOKEN_FILE", token_file.display().to_string()),
            // A token is only sent to named forge hosts (file:// clones need none).
            ("RAIBID_ALLOWED_HOSTS", "gitea.test".to_string()),
            ("RAIBID_SECRET_SCOPED_ONE", SCOPED.to_string()),
            ("RAIBID_SECRET_UNSCOPED_ONE", UNSCOPED.to_string()),
            ("RAIBID_SECRET_SCOPES", format!("SCOPED_ONE={repo}")),
        ],
    );
    // The Redis password only in the file.
    cmd.env("RAIBID_REDIS_URL", "redis://127.0.0.1:1");
    e.start(cmd);
    wait_log(
        &e.log_path("agent-secrets"),
        "agent started",
        Duration::from_secs(20),
    );
    let id = e.submit(&repo).await;
    let j = e.wait_final(&id, Duration::from_secs(60)).await;
    let log: Vec<String> = e.logs(&id).await.into_iter().map(|l| l.line).collect();
    let all = log.join("\n");
    assert_eq!(
        j.status.as_str(),
        "succeeded",
        "{:?}\n{all}\n{}",
        j.failure_reason,
        e.agent_log("agent-secrets")
    );
    assert!(all.contains("searched "), "{all}");
    assert!(all.contains("as nobody"), "{all}");
    // The mirror was fetched over protocol v2 by the agent's own client, its git processes as the
    // step user (no fallback to `git fetch`).
    assert!(all.contains("$ git upload-pack "), "{all}");
    assert!(!all.contains("fetching with git fetch"), "{all}");
    let leaks: Vec<&String> = log.iter().filter(|l| l.starts_with("LEAK in")).collect();
    assert!(
        leaks.is_empty(),
        "a step found the agent's secrets: {leaks:?}"
    );
    assert!(all.contains("scoped-secret-ok"), "{all}");
    // The search finds what is there: the step's own secret in its own /proc entry.
    assert!(all.contains("control-found-in-proc"), "{all}");
    // A repository that is not allowed a secret does not get it.
    let id2 = e.submit(&other).await;
    let j2 = e.wait_final(&id2, Duration::from_secs(60)).await;
    let log2: Vec<String> = e.logs(&id2).await.into_iter().map(|l| l.line).collect();
    let rev: String = UNSCOPED.chars().rev().collect();
    assert!(
        !log2.join("\n").contains(&rev),
        "the unscoped secret reached the step"
    );
    assert_eq!(
        (j2.status.as_str(), j2.step.as_deref()),
        ("failed", Some("config")),
        "{:?}",
        j2.failure_reason
    );
    assert!(j2
        .failure_reason
        .unwrap_or_default()
        .contains("not available to this repository"));
}

/// A step that searches every process's environment and command line, the given files and its own
/// environment for `secrets` and prints `LEAK in <where>` for each hit, then `searched N files as
/// <user>`; a control then looks for `control` (the step's own secret) in its own `/proc` entry and
/// prints `control-found-in-proc` when the search can see what is there.
fn leak_search_step(secrets: &[&str], files: &[&std::path::Path], control: &str) -> String {
    let patterns = secrets.iter().map(|s| b64(s)).collect::<Vec<_>>().join(" ");
    let files = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        r#"for p in {patterns}; do echo "$p" | base64 -d; echo; done > pat
n=0
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline {files}; do
  n=$((n+1))
  if {{ tr '\0' '\n' < "$f"; }} 2>/dev/null | grep -qF -f pat; then echo "LEAK in $f"; fi
done
if env | grep -qF -f pat; then echo "LEAK in the environment"; fi
echo "searched $n files as $(id -un)"
echo {control} | base64 -d > ctl; echo >> ctl
tr '\0' '\n' < /proc/$$/environ | grep -qF -f ctl && echo control-found-in-proc
"#,
        control = b64(control),
    );
    script
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
}

/// The cluster's case (issue 8 §9, ADR 0009): the agent runs unprivileged (here uid 65534, like the
/// pods' uid 1000) and its steps share its uid, so the credentials reach it only as environment — the
/// Redis password inside `RAIBID_REDIS_URL`, `RAIBID_GIT_TOKEN`, a scoped secret — never as files. A step
/// of the same uid searching `/proc/*/environ`, `/proc/*/cmdline` and its environment finds none of them:
/// the agent is non-dumpable, and git and the steps get a cleared environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn as_in_a_pod_a_same_uid_step_cannot_read_credentials_the_agent_got_as_environment() {
    use std::os::unix::process::CommandExt;
    const REDIS_PASSWORD: &str = "redis-pw-pod-91aa7c";
    const GIT_TOKEN: &str = "git-token-pod-3e5f11";
    const SCOPED: &str = "scoped-pod-value-c0de";
    const UID: u32 = 65534;
    let e = env(Some(REDIS_PASSWORD)).await;
    // The agent's user reaches the repositories under the temp dir; its roots are its own.
    std::fs::set_permissions(e.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["ws", "cache", "home"] {
        let p = e.tmp.path().join(d);
        std::fs::create_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(UID), Some(UID)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let step = leak_search_step(&[REDIS_PASSWORD, GIT_TOKEN], &[], SCOPED);
    let yaml = format!("secrets: [SCOPED_ONE]\nsteps:\n  - name: search\n    run: |\n{step}");
    let repo = make_repo(&e.tmp.path().join("searcher"), &yaml);
    // git refuses a repository another user owns (safe.directory); the pods clone over HTTP instead.
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{UID}:{UID}")])
        .arg(e.tmp.path().join("searcher"))
        .status()
        .unwrap();
    assert!(chown.success());
    let cmd = e.agent_cmd(
        "agent-pod",
        &[
            ("RAIBID_GIT_TOKEN", GIT_TOKEN.to_string()),
            ("RAIBID_GIT_USERNAME", "raibid".to_string()),
            ("RAIBID_ALLOWED_HOSTS", "gitea.test".to_string()),
            ("RAIBID_SECRET_SCOPED_ONE", SCOPED.to_string()),
            ("RAIBID_SECRET_SCOPES", format!("SCOPED_ONE={repo}")),
            ("HOME", e.tmp.path().join("home").display().to_string()),
        ],
    );
    assert!(
        e.redis.url().contains(REDIS_PASSWORD),
        "the agent gets the password in its RAIBID_REDIS_URL"
    );
    // Run from where uid 65534 can reach it (the checkout may be under a mode-0700 directory).
    let bin_dir = e.tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let mut cmd = same_command_from(&agent_binary_in(&bin_dir), &cmd, &e.log_path("agent-pod"));
    cmd.uid(UID).gid(UID);
    let pid = e.start(cmd);
    wait_log(
        &e.log_path("agent-pod"),
        "agent started",
        Duration::from_secs(20),
    );
    // The agent really holds the credentials in its environment (root can see them).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains(GIT_TOKEN) && environ.contains(REDIS_PASSWORD));
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/status"))
            .unwrap()
            .uid(),
        0,
        "a non-dumpable process's /proc files belong to root"
    );
    let id = e.submit(&repo).await;
    let j = e.wait_final(&id, Duration::from_secs(60)).await;
    let log: Vec<String> = e.logs(&id).await.into_iter().map(|l| l.line).collect();
    let all = log.join("\n");
    assert_eq!(
        j.status.as_str(),
        "succeeded",
        "{:?}\n{all}\n{}",
        j.failure_reason,
        e.agent_log("agent-pod")
    );
    assert!(all.contains("searched "), "{all}");
    assert!(
        all.contains("as nobody"),
        "the step ran as the agent's own uid: {all}"
    );
    let leaks: Vec<&String> = log.iter().filter(|l| l.starts_with("LEAK in")).collect();
    assert!(
        leaks.is_empty(),
        "a same-uid step found the agent's credentials: {leaks:?}"
    );
    assert!(all.contains("control-found-in-proc"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workspace_and_cache_roots_are_owner_only_and_foreign_ones_are_refused() {
    let e = env(None).await;
    let mut a = e.agent_cmd("agent-dirs", &[]).spawn().unwrap();
    wait_log(
        &e.log_path("agent-dirs"),
        "agent started",
        Duration::from_secs(20),
    );
    for d in ["ws", "cache", "cache/cargo"] {
        let m = std::fs::metadata(e.tmp.path().join(d)).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700, "{d} is owner-only");
    }
    let _ = a.kill();
    let _ = a.wait();
    // A cache directory planted by another user is refused.
    let planted = e.tmp.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let mut b = e
        .agent_cmd(
            "agent-planted",
            &[("RAIBID_CACHE_DIR", planted.display().to_string())],
        )
        .spawn()
        .unwrap();
    let st = wait_exit(&mut b, Duration::from_secs(20));
    let log = e.agent_log("agent-planted");
    assert_eq!(st, Some(1), "the agent refuses a foreign cache dir: {log}");
    assert!(
        log.contains("refusing to use") && log.contains("owned by uid 65534"),
        "{log}"
    );
}

fn wait_exit(c: &mut std::process::Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = c.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_with_concurrency_runs_exactly_one_job() {
    let e = env(None).await;
    let repo = make_repo(
        &e.tmp.path().join("once"),
        "steps:\n  - name: a\n    run: sleep 0.3\n",
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(e.submit(&repo).await);
    }
    let mut cmd = e.agent_cmd("agent-once", &[]);
    cmd.args(["--once", "--concurrency", "3", "--idle-timeout-secs", "5"]);
    let mut a = cmd.spawn().unwrap();
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut a, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(st, Some(0));
    let mut finished = 0;
    for id in &ids {
        if e.job(id).await.status.is_final() {
            finished += 1;
        }
    }
    assert_eq!(finished, 1, "--once ran exactly one job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_started_at_once_with_one_name_get_it_exactly_once() {
    let e = env(None).await;
    let cmds: Vec<_> = (0..6)
        .map(|i| {
            let mut c = e.agent_cmd("same-name", &[]);
            c.stderr(std::fs::File::create(e.tmp.path().join(format!("same-{i}.log"))).unwrap());
            c
        })
        .collect();
    let mut agents: Vec<_> = cmds.into_iter().map(|mut c| c.spawn().unwrap()).collect();
    // Those that lost exit 1 quickly; the winner keeps running.
    std::thread::sleep(Duration::from_secs(3));
    let mut running = 0;
    let mut refused = 0;
    for a in agents.iter_mut() {
        match a.try_wait().unwrap() {
            None => running += 1,
            Some(st) if st.code() == Some(1) => refused += 1,
            Some(st) => panic!("unexpected exit {st}"),
        }
    }
    for a in agents.iter_mut() {
        let _ = a.kill();
        let _ = a.wait();
    }
    let logs: String = (0..6)
        .map(|i| std::fs::read_to_string(e.tmp.path().join(format!("same-{i}.log"))).unwrap())
        .collect();
    assert_eq!((running, refused), (1, 5), "{logs}");
    assert!(logs.contains("another agent with consumer name `same-name` is alive"));
}
