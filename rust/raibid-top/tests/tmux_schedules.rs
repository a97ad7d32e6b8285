//! The `:schedules` view in a real terminal (issue 22 §3): a real Redis, the real dispatcher (its
//! scheduler ticking every 200 ms) serving on loopback, tmux running the real `raibid-top` binary, the
//! screen read with `tmux capture-pane`. Every wait polls the screen (or the API) for what it awaits,
//! with a deadline; nothing sleeps to synchronise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use raibid_core::queue::Queue;
use raibid_core::testkit::RedisServer;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "top-schedules-token-0123456789";

struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str, env: &[(&str, String)]) -> Tmux {
        let t = Tmux {
            socket: format!("raibid-top-sched-{}", std::process::id()),
        };
        let mut args: Vec<String> = ["new-session", "-d", "-s", "top", "-x", "120", "-y", "36"]
            .map(String::from)
            .to_vec();
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(cmd.to_string());
        t.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        t.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn command(&self, line: &str) {
        self.run(&["send-keys", "-t", "top", ":"]);
        self.run(&["send-keys", "-t", "top", "-l", line]);
        self.run(&["send-keys", "-t", "top", "Enter"]);
    }

    async fn wait(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.run(&["capture-pane", "-p", "-t", "top"]);
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
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_view_in_tmux_shows_next_run_and_the_last_result() {
    let redis = RedisServer::start().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = raibid_dispatcher::DispatcherConfig::parse_from([
        "raibid-dispatcher",
        "--api-token",
        TOKEN,
        "--redis-url",
        &redis.url(),
        "--allowed-schemes",
        "file",
        "--schedule-tick-ms",
        "200",
    ]);
    let settings = raibid_dispatcher::Settings::from_config(&cfg).unwrap();
    let queue = Queue::connect(&redis.url(), cfg.queue_config())
        .await
        .unwrap();
    let state = raibid_dispatcher::AppState::new(queue, settings);
    tokio::spawn(raibid_dispatcher::serve(
        state,
        listener,
        std::future::pending::<()>(),
    ));
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let r = http
            .post(format!("{base}/api/v1/schedules"))
            .bearer_auth(TOKEN)
            .json(&body);
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 201);
            r.json::<Value>().await.unwrap()
        }
    };
    let nightly = post(json!({"repo_url": "file:///srv/octo/hello", "ref": "main",
        "cron": "0 3 * * *", "timezone": "Europe/Berlin", "env": {"CARGO_UPDATE": "1"}, "paused": true}))
    .await;
    let often = post(
        json!({"repo_url": "file:///srv/acme/svc-api", "ref": "main", "cron": "*/3 * * * * *"}),
    )
    .await;
    assert_eq!(nightly["paused"], true);

    let tmux = Tmux::start(
        env!("CARGO_BIN_EXE_raibid-top"),
        &[
            ("RAIBID_URL", base.clone()),
            ("RAIBID_API_TOKEN", TOKEN.to_string()),
            ("TERM", "xterm-256color".into()),
        ],
    );
    tmux.wait("live", Duration::from_secs(20), |s| s.contains("● live"))
        .await;
    tmux.command("schedules");
    let s = tmux
        .wait("both schedules", Duration::from_secs(10), |s| {
            s.contains("schedules (2)") && s.contains("octo/hello") && s.contains("acme/svc-api")
        })
        .await;
    let row = |s: &str, repo: &str| {
        s.lines()
            .find(|l| l.contains(repo))
            .unwrap_or("")
            .to_string()
    };
    assert!(row(&s, "octo/hello").contains("paused"), "{s}");
    assert!(row(&s, "octo/hello").contains("CARGO_UPDATE=1"), "{s}");
    assert!(row(&s, "octo/hello").contains("Europe/Berlin"), "{s}");
    assert!(row(&s, "acme/svc-api").contains("in "), "{s}");

    // The frequent one fires (a job nobody runs: queued); `:schedules` again shows its last result.
    let id = often["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v: Value = http
            .get(format!("{base}/api/v1/schedules/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["last_job"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "the schedule never fired: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tmux.command("schedules");
    tmux.wait("the last result", Duration::from_secs(10), |s| {
        row(s, "acme/svc-api").contains("queued")
    })
    .await;
}
