//! `GET /api/v1/events` against a real Redis, the real dispatcher and a real agent: job events in
//! order with their stream ids, resume with `Last-Event-ID`, queue figures and agents seen/gone,
//! heartbeats, the bearer token, and the end of the stream when the dispatcher stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures::StreamExt;
use raibid_core::event::{EventKind, LiveEvent};
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

/// One parsed SSE message: a comment (heartbeat) or an event.
#[derive(Debug)]
enum Msg {
    Comment,
    Event { id: Option<String>, ev: LiveEvent },
}

struct Feed {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buf: String,
}

impl Feed {
    async fn open(env: &TestEnv, last_event_id: Option<&str>) -> Feed {
        let mut req = env.http.get(env.url("/api/v1/events")).bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Feed {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next message, or None when the stream ended or nothing came before the deadline.
    async fn next(&mut self, deadline: Instant) -> Option<Msg> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..i + 2).collect();
                let (mut name, mut id, mut data, mut comment) = ("", None, String::new(), false);
                for l in raw.lines() {
                    if l.starts_with(':') {
                        comment = true;
                    } else if let Some(v) = l.strip_prefix("event:") {
                        name = v.trim();
                    } else if let Some(v) = l.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = l.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if comment && name.is_empty() {
                    return Some(Msg::Comment);
                }
                let ev = LiveEvent::parse(name, &data)
                    .unwrap()
                    .unwrap_or_else(|| panic!("unknown event {name}"));
                return Some(Msg::Event { id, ev });
            }
            match tokio::time::timeout_at(deadline.into(), self.body.next()).await {
                Ok(Some(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
                _ => return None,
            }
        }
    }

    /// Events until `stop` says so (comments skipped), panicking at the deadline.
    async fn until(
        &mut self,
        within: Duration,
        mut stop: impl FnMut(&LiveEvent) -> bool,
    ) -> Vec<(Option<String>, LiveEvent)> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            match self.next(deadline).await {
                Some(Msg::Comment) => {}
                Some(Msg::Event { id, ev }) => {
                    let done = stop(&ev);
                    out.push((id, ev));
                    if done {
                        return out;
                    }
                }
                None => panic!("stream ended or timed out; got {out:#?}"),
            }
        }
    }
}

fn fast_repo(env: &TestEnv, name: &str) -> String {
    let yaml = "steps:\n  - name: hello\n    run: echo hello from the job\n";
    make_repo(&env.tmp.path().join(name), &[(".raibid.yaml", yaml)]).0
}

fn job_kinds(evs: &[(Option<String>, LiveEvent)], job: &str) -> Vec<(String, String)> {
    evs.iter()
        .filter_map(|(id, e)| match e {
            LiveEvent::Job(j) if j.job == job => Some((j.kind.clone(), id.clone().unwrap())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_need_the_token() {
    let env = spawn_app(Options::default()).await;
    let r = env
        .http
        .get(env.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = env
        .http
        .get(env.url("/api/v1/events"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = env
        .http
        .get(env.url("/api/v1/events"))
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", "$")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_live_in_order_with_ids_then_resume_from_last_event_id() {
    let env = spawn_app(Options::default()).await;
    let mut feed = Feed::open(&env, None).await;
    let first = feed
        .until(Duration::from_secs(10), |e| {
            matches!(e, LiveEvent::Queue(_))
        })
        .await;
    assert!(
        matches!(&first[0].1, LiveEvent::Hello { cursor } if cursor == "0-0"),
        "{first:?}"
    );
    let agent = env.start_agent("agent-events");
    let seen = feed
        .until(
            Duration::from_secs(20),
            |e| matches!(e, LiveEvent::AgentSeen(a) if a.id == "agent-events"),
        )
        .await;
    assert!(!seen.is_empty());
    let url = fast_repo(&env, "fast");
    let (code, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let evs = feed
        .until(Duration::from_secs(60), |e| {
            matches!(e, LiveEvent::Job(j) if j.job == id && j.event_kind() == EventKind::JobFinished)
        })
        .await;
    let kinds = job_kinds(&evs, &id);
    let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names.first(), Some(&"job_created"), "{names:?}");
    assert_eq!(names.get(1), Some(&"job_claimed"), "{names:?}");
    assert!(
        names.contains(&"step_started") && names.contains(&"step_finished"),
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"job_finished"));
    // Ids are stream entry ids, strictly increasing.
    let ids: Vec<(i64, i64)> = kinds
        .iter()
        .map(|(_, id)| {
            let (a, b) = id.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let LiveEvent::Job(fin) = &evs.last().unwrap().1 else {
        unreachable!()
    };
    assert_eq!(fin.status.as_str(), "succeeded");
    // The queue figures moved with the job: some event showed it pending or queued.
    assert!(evs.iter().any(|(_, e)| matches!(e, LiveEvent::Queue(_))));
    drop(feed);

    // Resume after the claim: exactly the later events come again, same ids.
    let mut again = Feed::open(&env, Some(&kinds[1].1)).await;
    let replay = again
        .until(Duration::from_secs(10), |e| {
            matches!(e, LiveEvent::Job(j) if j.job == id && j.event_kind() == EventKind::JobFinished)
        })
        .await;
    assert!(matches!(&replay[0].1, LiveEvent::Hello { cursor } if *cursor == kinds[1].1));
    assert_eq!(job_kinds(&replay, &id), kinds[2..].to_vec());

    // The agent deregisters: agent_gone.
    agent.stop().await;
    again
        .until(
            Duration::from_secs(20),
            |e| matches!(e, LiveEvent::AgentGone { id } if id == "agent-events"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_streams_get_heartbeats_and_end_when_the_dispatcher_stops() {
    let mut env = spawn_app(Options::default()).await;
    let mut feed = Feed::open(&env, None).await;
    let deadline = Instant::now() + raibid_dispatcher::events::HEARTBEAT * 3;
    let mut got_comment = false;
    while let Some(m) = feed.next(deadline).await {
        if matches!(m, Msg::Comment) {
            got_comment = true;
            break;
        }
    }
    assert!(
        got_comment,
        "no keep-alive comment within 3 heartbeat intervals"
    );
    // A connection that opens now starts at the newest entry: a job created before it is not replayed.
    let url = fast_repo(&env, "before");
    let (_, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    let before = v["id"].as_str().unwrap().to_string();
    let mut late = Feed::open(&env, None).await;
    let hello = late.until(Duration::from_secs(5), |_| true).await;
    assert!(matches!(&hello[0].1, LiveEvent::Hello { cursor } if cursor != "0-0"));
    let (_, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    let after = v["id"].as_str().unwrap().to_string();
    let evs = late
        .until(
            Duration::from_secs(10),
            |e| matches!(e, LiveEvent::Job(j) if j.job == after),
        )
        .await;
    assert!(job_kinds(&evs, &before).is_empty(), "{evs:?}");

    env.stop_dispatcher();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(_m) = feed.next(deadline).await {}
    assert!(
        Instant::now() < deadline,
        "the stream did not end when the dispatcher stopped"
    );
}

async fn redis_con(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The `job_created` event ids of `n` jobs submitted now (no agent runs: they stay queued).
async fn created(env: &TestEnv, url: &str, feed: &mut Feed, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let (code, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        assert_eq!(code, 201, "{v}");
        let job = v["id"].as_str().unwrap().to_string();
        let evs = feed
            .until(
                Duration::from_secs(10),
                |e| matches!(e, LiveEvent::Job(j) if j.job == job),
            )
            .await;
        ids.push(evs.last().unwrap().0.clone().unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_last_event_id_the_trimmed_stream_no_longer_holds_gets_resync_first() {
    let env = spawn_app(Options::default()).await;
    let mut feed = Feed::open(&env, None).await;
    feed.until(Duration::from_secs(10), |e| {
        matches!(e, LiveEvent::Hello { .. })
    })
    .await;
    let url = fast_repo(&env, "trim");
    let ids = created(&env, &url, &mut feed, 6).await;
    drop(feed);
    // The stream is trimmed to its newest entries (as the XADD MAXLEN cap does): the first two go.
    let mut con = redis_con(&env).await;
    let removed: u64 = redis::cmd("XTRIM")
        .arg("raibid:events")
        .arg("MINID")
        .arg(&ids[2])
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(removed, 2);

    // Resuming after the first event: the event after it is gone. `resync` comes right after the
    // hello, before any job event, with `id:` = where the connection goes on from (the newest entry).
    let mut stale = Feed::open(&env, Some(&ids[0])).await;
    let evs = stale
        .until(Duration::from_secs(10), |e| {
            matches!(e, LiveEvent::Resync { .. })
        })
        .await;
    let newest = ids.last().unwrap();
    assert!(
        matches!(&evs[0].1, LiveEvent::Hello { cursor } if cursor == newest),
        "{evs:?}"
    );
    let (rid, resync) = evs.last().unwrap();
    assert_eq!(evs.len(), 2, "resync is the second event: {evs:?}");
    assert_eq!(rid.as_deref(), Some(newest.as_str()));
    let LiveEvent::Resync {
        requested,
        cursor,
        reason,
    } = resync
    else {
        unreachable!()
    };
    assert_eq!(requested, &ids[0]);
    assert_eq!(cursor, newest);
    assert!(
        reason.contains("older than the oldest event still kept"),
        "{reason}"
    );
    // ... and it goes on live from there: a new job's event comes, none of the old ones.
    let later = created(&env, &url, &mut stale, 1).await;
    assert!(later[0] > *newest);
    drop(stale);

    // Resuming after an event still kept: no resync, the later entries are replayed.
    let mut fine = Feed::open(&env, Some(&ids[2])).await;
    let evs = fine
        .until(Duration::from_secs(10), |e| matches!(e, LiveEvent::Job(_)))
        .await;
    assert!(
        matches!(&evs[0].1, LiveEvent::Hello { cursor } if *cursor == ids[2]),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|(_, e)| matches!(e, LiveEvent::Resync { .. })),
        "{evs:?}"
    );
    assert_eq!(evs.last().unwrap().0.as_deref(), Some(ids[3].as_str()));
    drop(fine);

    // Redis lost its data (a flush): an id from before is newer than anything there now.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let mut reset = Feed::open(&env, Some(&later[0])).await;
    let evs = reset
        .until(Duration::from_secs(10), |e| {
            matches!(e, LiveEvent::Resync { .. })
        })
        .await;
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(matches!(&evs[0].1, LiveEvent::Hello { cursor } if cursor == "0-0"));
}
