//! End to end in a real terminal: tmux runs the real `raibid-top` binary against a real stack (its own
//! redis-server on a free port, the dispatcher and an agent, the same code as their binaries) and the
//! test reads the screen with `tmux capture-pane`. No key is pressed for the job to go queued → running
//! → succeeded on screen; its log opens and shows the build's lines; a long job is cancelled from the UI;
//! the dispatcher restarts and raibid-top reconnects and catches up by itself. Every wait polls the screen
//! until the text appears, with a deadline; nothing sleeps to synchronise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use raibid_core::job::{Job, Source, Trigger, TriggerKind};
use raibid_core::queue::{Queue, QueueConfig};
use raibid_core::testkit::RedisServer;
use raibid_dispatcher::{serve, AppState, Settings};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "tmux-test-token-0123456789";

struct Dispatcher {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<()>,
}

async fn start_dispatcher(queue: &Queue, addr: SocketAddr) -> Dispatcher {
    let settings = Settings {
        api_token: TOKEN.into(),
        gitea_secret: None,
        github_secret: None,
        gitea: None,
        mirrors: Default::default(),
        public_url: format!("http://{addr}"),
        body_limit: 1 << 20,
        lease: Duration::from_secs(30),
        // Jobs here clone file:// repositories.
        intake: raibid_dispatcher::Intake {
            allowed_schemes: raibid_dispatcher::csv_list("file,http,https,ssh"),
            ..raibid_dispatcher::Intake::default()
        },
    };
    // The port was just released by the previous dispatcher: retry the bind briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    let state = AppState::new(queue.clone(), settings);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        serve(state, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Dispatcher {
        stop: Some(tx),
        join,
    }
}

impl Dispatcher {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.join)
            .await
            .expect("the dispatcher stops within 20 s")
            .unwrap();
    }
}

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &[&str], env: &[(&str, String)]) -> Tmux {
        let socket = format!("raibid-top-test-{}", std::process::id());
        let t = Tmux { socket };
        let mut args: Vec<String> = ["new-session", "-d", "-s", "top", "-x", "120", "-y", "36"]
            .map(String::from)
            .to_vec();
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(cmd.iter().map(|s| s.to_string()));
        t.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        // Keep the pane after the program exits, to read what it printed.
        t.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (apt-get install tmux; ./scripts/dev.sh test installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend(keys);
        self.run(&args);
    }

    fn literal(&self, text: &str) {
        self.run(&["send-keys", "-t", "top", "-l", text]);
    }

    /// Poll the screen until `pred` holds; panic with the screen at the deadline.
    async fn wait(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "screen did not show {what} within {within:?}:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait for the row of job `id` to show `status`.
    async fn wait_row(&self, id: &str, status: &str, within: Duration) -> String {
        self.wait(&format!("job {id} {status}"), within, |s| {
            s.lines().any(|l| l.contains(id) && l.contains(status))
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn git_repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(".raibid.yaml"), pipeline).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@raibid.invalid"])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "pipeline"]);
    format!("file://{}", dir.display())
}

async fn submit(http: &reqwest::Client, base: &str, url: &str) -> String {
    let r = http
        .post(format!("{base}/api/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(&json!({"repo_url": url, "ref": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn agent(
    redis: &RedisServer,
    tmp: &Path,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    // Every option at its default (as the binary parses them), then what the test needs.
    use clap::Parser;
    let mut cfg = raibid_agent::AgentConfig::parse_from(["raibid-agent"]);
    cfg.redis_url = redis.url();
    cfg.name = Some("tmux-agent".into());
    cfg.workspace_dir = tmp.join("ws");
    cfg.cache_dir = tmp.join("cache");
    cfg.allowed_schemes = "file".into();
    cfg.allowed_hosts = String::new();
    cfg.grace_secs = 5;
    cfg.block_ms = 500;
    let (tx, rx) = tokio::sync::watch::channel(false);
    (tx, tokio::spawn(raibid_agent::run(cfg, rx)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raibid_top_in_tmux_follows_the_real_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().unwrap();
    let queue = Queue::connect(&redis.url(), QueueConfig::default())
        .await
        .unwrap();
    let port = raibid_core::testkit::free_port().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let dispatcher = start_dispatcher(&queue, addr).await;

    let tmux = Tmux::start(
        &[env!("CARGO_BIN_EXE_raibid-top")],
        &[
            ("RAIBID_URL", base.clone()),
            ("RAIBID_API_TOKEN", TOKEN.to_string()),
            ("TERM", "xterm-256color".into()),
        ],
    );
    tmux.wait("the empty job list, live", Duration::from_secs(20), |s| {
        s.contains("● live") && s.contains("no jobs yet")
    })
    .await;

    // A job submitted with no agent running waits, queued.
    let fast = git_repo(
        &tmp.path().join("fast"),
        "steps:\n  - name: build\n    run: echo compiling-the-crate; sleep 2; echo hello-from-the-build; echo warned >&2\n",
    );
    // Submitted from the UI: `:submit <url> main`; the status line names the new job.
    tmux.keys(&[":"]);
    tmux.literal(&format!("submit {fast} main"));
    tmux.keys(&["Enter"]);
    let s = tmux
        .wait("the submitted job's id", Duration::from_secs(10), |s| {
            s.contains(" as ")
        })
        .await;
    let id: String = s
        .lines()
        .find_map(|l| {
            l.split_once(" as ")
                .map(|(_, r)| r.chars().take(26).collect())
        })
        .unwrap();
    assert!(raibid_core::job::is_valid_job_id(&id), "{id:?} in\n{s}");
    tmux.wait_row(&id, "queued", Duration::from_secs(10)).await;
    // An agent starts: running, then succeeded, without a key pressed.
    let (agent_stop, agent_join) = agent(&redis, tmp.path());
    tmux.wait_row(&id, "running", Duration::from_secs(30)).await;
    tmux.wait_row(&id, "succeeded", Duration::from_secs(60))
        .await;
    tmux.wait(
        "the idle agent and the hour's figures",
        Duration::from_secs(10),
        |s| s.contains("0 busy/1 idle") && s.contains("1h 1 done 100% ok"),
    )
    .await;

    // Its log: filter the list down to it, open the log.
    tmux.keys(&["/"]);
    tmux.literal(&id);
    tmux.keys(&["Enter", "l"]);
    let s = tmux
        .wait("the build's log lines", Duration::from_secs(10), |s| {
            s.contains("hello-from-the-build") && s.contains("── step build")
        })
        .await;
    assert!(s.contains("compiling-the-crate"), "{s}");
    assert!(s.contains("▌warned"), "stderr is marked: {s}");
    tmux.keys(&["q", "Escape"]);
    tmux.wait("the full list again", Duration::from_secs(5), |s| {
        s.contains("jobs (1/1) ──")
    })
    .await;

    // A long job, cancelled from the UI.
    let slow = git_repo(
        &tmp.path().join("slow"),
        "steps:\n  - name: wait\n    run: echo started-waiting; sleep 300\n",
    );
    let long = submit(&http, &base, &slow).await;
    tmux.wait_row(&long, "running", Duration::from_secs(30))
        .await;
    tmux.keys(&["/"]);
    tmux.literal(&long);
    tmux.keys(&["Enter", "c"]);
    tmux.wait("the cancel question", Duration::from_secs(5), |s| {
        s.contains("? y/n")
    })
    .await;
    tmux.keys(&["y"]);
    tmux.wait_row(&long, "cancelled", Duration::from_secs(30))
        .await;
    tmux.keys(&["Escape"]);

    // The dispatcher restarts: raibid-top says it lost the connection, reconnects by itself, and
    // catches up on what happened meanwhile (a job enqueued while the dispatcher was down).
    dispatcher.stop().await;
    tmux.wait("the lost connection", Duration::from_secs(15), |s| {
        s.contains("disconnected") || s.contains("reconnecting")
    })
    .await;
    let job = Job::new(
        Source {
            repo_url: fast.clone(),
            git_ref: "refs/heads/main".into(),
            sha: None,
            trigger: Trigger {
                kind: TriggerKind::Api,
                actor: None,
            },
            delivery_id: None,
            forge_repo: None,
        },
        chrono::Utc::now(),
    );
    let during = job.id.clone();
    queue.enqueue(job, None).await.unwrap();
    let dispatcher = start_dispatcher(&queue, addr).await;
    tmux.wait("live again", Duration::from_secs(20), |s| {
        s.contains("● live") && !s.contains("disconnected")
    })
    .await;
    tmux.wait_row(&during, "succeeded", Duration::from_secs(60))
        .await;

    // q quits and the terminal is given back.
    tmux.keys(&["q"]);
    tmux.wait("the program gone", Duration::from_secs(10), |s| {
        !s.contains("raibid-top ") || s.contains("Pane is dead")
    })
    .await;
    let _ = agent_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), agent_join).await;
    dispatcher.stop().await;
}
