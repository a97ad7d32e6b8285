//! Scheduled builds (issue 22 §3) with real parts: a real Redis, real dispatcher processes (two at
//! once, one killed and restarted), the REST API. Schedules of a few seconds (croner reads an optional
//! seconds field) make several due times pass within a test. No agent runs: the jobs stay queued,
//! which is all these tests look at (who fired, how often, for which due time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use raibid_core::testkit::{free_port, RedisServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_raibid-dispatcher");
const TOKEN: &str = "schedule-test-token";

struct Dispatcher {
    child: Child,
    base: String,
}

impl Dispatcher {
    async fn start(redis: &RedisServer) -> Dispatcher {
        let port = free_port().unwrap();
        let child = Command::new(BIN)
            .env("RAIBID_REDIS_URL", redis.url())
            .env("RAIBID_API_TOKEN", TOKEN)
            .env("RAIBID_LISTEN", format!("127.0.0.1:{port}"))
            .env("RAIBID_ALLOWED_SCHEMES", "file,https")
            .env("RAIBID_SCHEDULE_TICK_MS", "100")
            .env("RAIBID_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "dispatcher did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Dispatcher { child, base }
    }

    /// SIGKILL: no shutdown path runs.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create(base: &str, body: Value) -> Value {
    let (st, v) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/schedules"),
        Some(body),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    v
}

/// Due time (ms) → job ids, of the jobs a schedule made for its due times.
async fn fired(base: &str, schedule: &str) -> BTreeMap<i64, Vec<String>> {
    let (st, page) = call(
        reqwest::Method::GET,
        format!("{base}/api/v1/jobs?limit=500"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let mut out: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for j in page["jobs"].as_array().unwrap() {
        if j["schedule_id"] != schedule {
            continue;
        }
        assert_eq!(j["source"]["trigger"]["kind"], "schedule", "{j}");
        let Some(d) = j["source"]["delivery_id"].as_str() else {
            continue; // run now
        };
        let due: i64 = d.rsplit(':').next().unwrap().parse().unwrap();
        out.entry(due)
            .or_default()
            .push(j["id"].as_str().unwrap().to_string());
    }
    out
}

/// Wait until `pred` holds for the schedule's fired jobs.
async fn wait_fired(
    base: &str,
    schedule: &str,
    within: Duration,
    pred: impl Fn(&BTreeMap<i64, Vec<String>>) -> bool,
) -> BTreeMap<i64, Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let f = fired(base, schedule).await;
        if pred(&f) {
            return f;
        }
        assert!(Instant::now() < deadline, "timed out; fired so far: {f:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_fire_each_due_time_exactly_once() {
    let redis = RedisServer::start().unwrap();
    let a = Dispatcher::start(&redis).await;
    let b = Dispatcher::start(&redis).await;
    let s = create(
        &a.base,
        json!({"repo_url": "file:///srv/app", "ref": "main", "cron": "*/2 * * * * *",
               "timezone": "Europe/Berlin", "env": {"CARGO_UPDATE": "1"}}),
    )
    .await;
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["paused"], false);
    assert!(s["next_run"].is_string(), "{s}");
    // Five due times in a row, seen through the other replica's API.
    let f = wait_fired(&b.base, id, Duration::from_secs(30), |f| f.len() >= 5).await;
    // A late duplicate of a due time would come from the replica that lost its claim, within its
    // tick: the next due time fired since is the later event that settles the earlier ones.
    let last = *f.keys().last().unwrap();
    let f = wait_fired(&a.base, id, Duration::from_secs(10), |f| {
        f.keys().any(|d| *d > last)
    })
    .await;
    let dues: Vec<i64> = f.keys().copied().collect();
    for (due, jobs) in &f {
        assert_eq!(
            jobs.len(),
            1,
            "due time {due} fired {} times: {f:?}",
            jobs.len()
        );
        assert_eq!(due % 2000, 0, "due time {due} is not on the expression");
    }
    // Consecutive due times, two seconds apart. (A machine stalled for a whole period would make the
    // schedulers skip to the latest due time, by design: one such gap is tolerated, not a pattern.)
    let gaps: Vec<i64> = dues.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| g % 2000 == 0) && gaps.iter().filter(|g| **g != 2000).count() <= 1,
        "due times were skipped: {dues:?}"
    );
    // The job carries the trigger, the schedule and the variant.
    let job_id = &f.values().next().unwrap()[0];
    let (_, job) = call(
        reqwest::Method::GET,
        format!("{}/api/v1/jobs/{job_id}", a.base),
        None,
    )
    .await;
    assert_eq!(job["source"]["trigger"]["kind"], "schedule");
    assert_eq!(job["schedule_id"], id);
    assert_eq!(job["env"]["CARGO_UPDATE"], "1");
    assert_eq!(job["source"]["ref"], "refs/heads/main");
    // The schedule shows its last run.
    let (_, v) = call(
        reqwest::Method::GET,
        format!("{}/api/v1/schedules/{id}", b.base),
        None,
    )
    .await;
    assert_eq!(v["last_status"], "queued", "{v}");
    assert!(v["last_job"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_time_missed_while_down_fires_once_on_restart() {
    let redis = RedisServer::start().unwrap();
    let mut d = Dispatcher::start(&redis).await;
    let s = create(
        &d.base,
        json!({"repo_url": "file:///srv/app", "ref": "main", "cron": "* * * * * *"}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    let before = wait_fired(&d.base, &id, Duration::from_secs(15), |f| !f.is_empty()).await;
    d.kill();
    let killed_at = now_ms();
    // Several due times (one a second) pass with no dispatcher running.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let restarted_at = now_ms();
    let d = Dispatcher::start(&redis).await;
    // Wait for the first regular due time after the restart: by then the catch-up has happened.
    let f = wait_fired(&d.base, &id, Duration::from_secs(15), |f| {
        f.keys().any(|due| *due > restarted_at + 1000)
    })
    .await;
    let last_before = *before.keys().last().unwrap();
    let missed: Vec<i64> = f
        .keys()
        .copied()
        .filter(|due| *due > last_before.max(killed_at) && *due <= restarted_at)
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "due times missed while down should fire once on start: {missed:?} (all: {:?})",
        f.keys().collect::<Vec<_>>()
    );
    for (due, jobs) in &f {
        assert_eq!(jobs.len(), 1, "due time {due} fired twice: {f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_schedule_never_fires_and_resumes_without_catching_up() {
    let redis = RedisServer::start().unwrap();
    let a = Dispatcher::start(&redis).await;
    let b = Dispatcher::start(&redis).await;
    let paused = create(
        &a.base,
        json!({"repo_url": "file:///srv/app", "ref": "main", "cron": "* * * * * *", "paused": true}),
    )
    .await;
    let pid = paused["id"].as_str().unwrap().to_string();
    assert!(paused["next_run"].is_null(), "{paused}");
    // A running schedule on the same cadence is the clock: once it fired four times, the paused one
    // had four due times to (wrongly) fire on, under two replicas.
    let clock = create(
        &b.base,
        json!({"repo_url": "file:///srv/app", "ref": "dev", "cron": "* * * * * *"}),
    )
    .await;
    let cid = clock["id"].as_str().unwrap();
    wait_fired(&a.base, cid, Duration::from_secs(20), |f| f.len() >= 4).await;
    assert!(fired(&a.base, &pid).await.is_empty());
    // Pause the running one too: it stops (the pause is checked in the claim itself).
    let (st, v) = call(
        reqwest::Method::PATCH,
        format!("{}/api/v1/schedules/{cid}", a.base),
        Some(json!({"paused": true})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["paused"], true);
    let at_pause = fired(&a.base, cid).await;
    // Resume the first: it fires for due times after the resume only.
    let resumed_at = now_ms();
    let (st, v) = call(
        reqwest::Method::PATCH,
        format!("{}/api/v1/schedules/{pid}", b.base),
        Some(json!({"paused": false})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["next_run"].is_string());
    let f = wait_fired(&a.base, &pid, Duration::from_secs(10), |f| f.len() >= 3).await;
    assert!(
        f.keys().all(|due| *due > resumed_at - 1000),
        "a due time from before the resume fired: {f:?} (resumed at {resumed_at})"
    );
    // Three due times of the resumed one passed: the paused clock fired at most the due time it had
    // claimed as the pause came in.
    let after = fired(&a.base, cid).await;
    assert!(
        after.len() <= at_pause.len() + 1,
        "a paused schedule fired: {at_pause:?} → {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_naming_the_problem_and_the_routes_work() {
    let redis = RedisServer::start().unwrap();
    let d = Dispatcher::start(&redis).await;
    let url = format!("{}/api/v1/schedules", d.base);
    let post = |body: Value| call(reqwest::Method::POST, url.clone(), Some(body));
    let base = json!({"repo_url": "file:///srv/app", "ref": "main", "cron": "0 3 * * *"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let (st, v) = post(with("cron", json!("61 * * * *"))).await;
    assert_eq!(st, 422, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.starts_with("cron: `61 * * * *`"), "{m}");
    let (st, v) = post(with("cron", json!("every night"))).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`every night`"));
    let (st, v) = post(with("timezone", json!("Mars/Olympus_Mons"))).await;
    assert_eq!(st, 422, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.starts_with("timezone: `Mars/Olympus_Mons`"), "{m}");
    let (st, v) = post(with("env", json!({"LD_PRELOAD": "/tmp/x.so"}))).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("env.LD_PRELOAD:"));
    let (st, v) = post(with("repo_url", json!("ftp://example.com/x"))).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("repo_url:"));
    let (st, v) = post(with("cron", json!("0 0 30 2 *"))).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("never comes due"));
    let (st, _) = post(json!({"repo_url": "file:///srv/app"})).await;
    assert_eq!(st, 400);
    let (st, _) = post(with("bogus", json!(1))).await;
    assert_eq!(st, 400);
    // Without the token: 401.
    let r = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Nothing half-made.
    let (_, v) = call(reqwest::Method::GET, url.clone(), None).await;
    assert_eq!(v["schedules"], json!([]));

    // Create, get, list, patch, run now, delete.
    let s = create(&d.base, with("timezone", json!("America/New_York"))).await;
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["timezone"], "America/New_York");
    assert_eq!(s["ref"], "refs/heads/main");
    let (st, v) = call(
        reqwest::Method::PATCH,
        format!("{url}/{id}"),
        Some(json!({"timezone": "Nowhere/Land"})),
    )
    .await;
    assert_eq!(st, 422);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`Nowhere/Land`"));
    let (st, job) = call(reqwest::Method::POST, format!("{url}/{id}/run"), None).await;
    assert_eq!(st, 201, "{job}");
    assert_eq!(job["source"]["trigger"]["kind"], "schedule");
    assert_eq!(job["schedule_id"], id);
    let (_, v) = call(reqwest::Method::GET, format!("{url}/{id}"), None).await;
    assert_eq!(v["last_job"], job["id"]);
    let (_, v) = call(reqwest::Method::GET, url.clone(), None).await;
    assert_eq!(v["schedules"].as_array().unwrap().len(), 1);
    let (st, _) = call(reqwest::Method::DELETE, format!("{url}/{id}"), None).await;
    assert_eq!(st, 204);
    let (st, v) = call(reqwest::Method::GET, format!("{url}/{id}"), None).await;
    assert_eq!(st, 404);
    assert!(v["error"]["message"].as_str().unwrap().contains(id));
    let (st, _) = call(reqwest::Method::DELETE, format!("{url}/{id}"), None).await;
    assert_eq!(st, 404);
    let (st, _) = call(reqwest::Method::GET, format!("{url}/..%2f..%2fx"), None).await;
    assert_eq!(st, 404);
}
