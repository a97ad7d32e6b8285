//! End to end in a real terminal against the real local stack: `./scripts/dev.sh up --agents 1
//! --no-demo` starts redis-server, the real raibid-dispatcher and raibid-agent processes (the binaries
//! `cargo test --workspace` built, through `--bin-dir`, in a state directory of the test's own through
//! `RAIBID_STATE_DIR`); the URL and token come from `./scripts/dev.sh env`; tmux runs the real
//! `raibid-top` binary and the test reads the screen with `tmux capture-pane`. No key is pressed for a
//! job to go queued → running → succeeded on screen; its log opens and shows the build's lines; a long
//! job is cancelled from the UI; `./scripts/dev.sh restart dispatcher` restarts the dispatcher process
//! and raibid-top reconnects by itself; so it does after `dev.sh down` and `dev.sh up` (same address and
//! token, kept by the state dir). `./scripts/dev.sh down` always runs (a drop guard). Every wait
//! polls the screen until the text appears, with a deadline; nothing sleeps to synchronise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The checkout (dev.sh lives in its scripts/).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The directory cargo put this package's binaries in (target/debug): where `cargo test --workspace`
/// built raibid-dispatcher and raibid-agent too.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_raibid-top"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `./scripts/dev.sh ARGS` for the stack in `state` (argv, no shell string).
fn dev_sh(state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(repo_root().join("scripts/dev.sh"));
    c.args(args)
        .env("RAIBID_STATE_DIR", state)
        .current_dir(repo_root());
    c
}

/// A local stack started with `dev.sh up`, stopped with `dev.sh down` on drop, whatever happened.
struct Stack {
    state: tempfile::TempDir,
    url: String,
    token: String,
}

impl Stack {
    fn up() -> Stack {
        let mut stack = Stack {
            state: tempfile::tempdir().unwrap(),
            url: String::new(),
            token: String::new(),
        };
        stack.start();
        stack
    }

    /// `dev.sh up` in this stack's state dir (again, after a `down`), then its URL and token from
    /// `dev.sh env`.
    fn start(&mut self) {
        for b in ["raibid-dispatcher", "raibid-agent"] {
            assert!(
                bin_dir().join(b).exists(),
                "{b} is not built in {}: run `cargo build --bins` (cargo test --workspace builds it)",
                bin_dir().display()
            );
        }
        let dir = bin_dir().display().to_string();
        let out = dev_sh(
            self.state.path(),
            &["up", "--bin-dir", &dir, "--agents", "1", "--no-demo"],
        )
        .output()
        .expect("./scripts/dev.sh runs");
        assert!(
            out.status.success(),
            "dev.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = dev_sh(self.state.path(), &["env"]).output().unwrap();
        assert!(env.status.success(), "dev.sh env failed");
        let env = String::from_utf8_lossy(&env.stdout).into_owned();
        let var = |name: &str| -> String {
            env.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("dev.sh env printed no {name}"))
                .to_string()
        };
        self.url = var("RAIBID_URL");
        self.token = var("RAIBID_API_TOKEN");
    }

    /// `dev.sh down` (the state dir, with its settings and Redis data, stays).
    fn down(&self) {
        let out = dev_sh(self.state.path(), &["down"]).output().unwrap();
        assert!(
            out.status.success(),
            "dev.sh down failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let out = dev_sh(self.state.path(), &["down"]).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("dev.sh down failed: {out:?}");
        }
    }
}

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, cmd: &[&str], env: &[(&str, String)]) -> Tmux {
        let socket = format!("raibid-top-test-{}-{name}", std::process::id());
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

    /// Wait for the row of job `id` to show `status` (the table shows the full id or its last 8
    /// characters, as the width allows).
    async fn wait_row(&self, id: &str, status: &str, within: Duration) -> String {
        let short = &id[id.len().saturating_sub(8)..];
        self.wait(&format!("job {id} {status}"), within, |s| {
            s.lines().any(|l| l.contains(short) && l.contains(status))
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

async fn submit(http: &reqwest::Client, stack: &Stack, url: &str) -> String {
    let r = http
        .post(format!("{}/api/v1/jobs", stack.url))
        .bearer_auth(&stack.token)
        .json(&json!({"repo_url": url, "ref": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raibid_top_in_tmux_follows_the_real_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Stack::up();
    let http = reqwest::Client::new();

    // The token goes to raibid-top in a file (0600), never on a command line.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, &stack.token).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let tmux = Tmux::start(
        "follows",
        &[env!("CARGO_BIN_EXE_raibid-top")],
        &[
            ("RAIBID_URL", stack.url.clone()),
            ("RAIBID_API_TOKEN_FILE", token_file.display().to_string()),
            ("TERM", "xterm-256color".into()),
        ],
    );
    tmux.wait("the empty job list, live", Duration::from_secs(20), |s| {
        s.contains("● live") && s.contains("no jobs yet")
    })
    .await;
    tmux.wait("the stack's agent, idle", Duration::from_secs(20), |s| {
        s.contains("0 busy/1 idle")
    })
    .await;

    // The one agent is busy with a job of a few seconds: the next job waits, queued.
    let busy = git_repo(
        &tmp.path().join("busy"),
        "steps:\n  - name: busy\n    run: echo busy-for-a-while; sleep 6\n",
    );
    let first = submit(&http, &stack, &busy).await;
    tmux.wait_row(&first, "running", Duration::from_secs(30))
        .await;
    let fast = git_repo(
        &tmp.path().join("fast"),
        "steps:\n  - name: build\n    run: echo compiling-the-crate; sleep 1; echo hello-from-the-build; echo warned >&2\n",
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
    // The agent frees up: running, then succeeded, without a key pressed.
    tmux.wait_row(&id, "running", Duration::from_secs(30)).await;
    tmux.wait_row(&id, "succeeded", Duration::from_secs(60))
        .await;
    tmux.wait(
        "the idle agent and the hour's figures",
        Duration::from_secs(10),
        |s| s.contains("0 busy/1 idle") && s.contains("1h 2 done 100% ok"),
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
        s.contains("jobs (2/2) ──")
    })
    .await;

    // A long job, cancelled from the UI.
    let slow = git_repo(
        &tmp.path().join("slow"),
        "steps:\n  - name: wait\n    run: echo started-waiting; sleep 300\n",
    );
    let long = submit(&http, &stack, &slow).await;
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

    // The dispatcher process restarts (dev.sh restart dispatcher: SIGTERM, then started again as `up`
    // did): raibid-top says it lost the connection, then reconnects by itself.
    let restart = dev_sh(stack.state.path(), &["restart", "dispatcher"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tmux.wait("the lost connection", Duration::from_secs(20), |s| {
        s.contains("disconnected") || s.contains("reconnecting")
    })
    .await;
    let out = tokio::task::spawn_blocking(move || restart.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "dev.sh restart dispatcher failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tmux.wait("live again", Duration::from_secs(30), |s| {
        s.contains("● live") && !s.contains("disconnected") && !s.contains("reconnecting")
    })
    .await;
    // Live again, for real: a job submitted now shows up and runs to the end with no key pressed.
    let after = submit(&http, &stack, &fast).await;
    tmux.wait_row(&after, "succeeded", Duration::from_secs(60))
        .await;

    // q quits and the terminal is given back.
    tmux.keys(&["q"]);
    tmux.wait("the program gone", Duration::from_secs(10), |s| {
        !s.contains("raibid-top ") || s.contains("Pane is dead")
    })
    .await;
    drop(tmux);
    drop(stack);
}

/// `dev.sh down` then `dev.sh up` in the same state dir: the dispatcher comes back at the same address
/// with the same token (and Redis with its data), and an open raibid-top reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raibid_top_reconnects_after_down_and_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stack = Stack::up();
    let http = reqwest::Client::new();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, &stack.token).unwrap();
    let tmux = Tmux::start(
        "downup",
        &[env!("CARGO_BIN_EXE_raibid-top")],
        &[
            ("RAIBID_URL", stack.url.clone()),
            ("RAIBID_API_TOKEN_FILE", token_file.display().to_string()),
            ("TERM", "xterm-256color".into()),
        ],
    );
    let fast = git_repo(
        &tmp.path().join("fast"),
        "steps:\n  - name: build\n    run: echo built\n",
    );
    let before = submit(&http, &stack, &fast).await;
    tmux.wait_row(&before, "succeeded", Duration::from_secs(60))
        .await;

    let (url, token) = (stack.url.clone(), stack.token.clone());
    stack.down();
    tmux.wait("the lost connection", Duration::from_secs(20), |s| {
        s.contains("disconnected") || s.contains("reconnecting")
    })
    .await;
    stack.start();
    assert_eq!(stack.url, url, "up keeps the dispatcher's address");
    assert_eq!(stack.token, token, "up keeps the API token");
    tmux.wait("live again", Duration::from_secs(30), |s| {
        s.contains("● live") && !s.contains("disconnected") && !s.contains("reconnecting")
    })
    .await;
    // The job from before is still listed (Redis kept its data), and a new one runs to the end.
    let after = submit(&http, &stack, &fast).await;
    let s = tmux
        .wait_row(&after, "succeeded", Duration::from_secs(60))
        .await;
    assert!(s.contains(&before[before.len() - 8..]), "{s}");
    tmux.keys(&["q"]);
    drop(tmux);
    drop(stack);
}
