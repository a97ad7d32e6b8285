//! The network side, on its own tasks: the live event stream (with reconnects, backoff and
//! `Last-Event-ID` catch-up), the first load of jobs, job fetches, log tails and the user's actions.
//! Everything it learns goes to the UI as [`Action::Net`]; it never touches the UI state.

use crate::action::{Action, Command, Net};
use raibid_core::contract::http;
use raibid_core::event::{DeadLetter, LiveEvent};
use raibid_core::job::{Job, Status};
use raibid_core::queue_view::LogLine;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Jobs per list request (the API's maximum).
const PAGE: usize = 500;
/// Log lines are handed to the UI in batches at most this often.
pub const LOG_BATCH: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The dispatcher's API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An error of the API, in words.
fn api_error(status: reqwest::StatusCode, body: &str) -> String {
    #[derive(Deserialize)]
    struct E {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    match serde_json::from_str::<E>(body) {
        Ok(e) => format!("{} ({})", e.error.message, status.as_u16()),
        Err(_) => format!("the dispatcher answered {status}"),
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "cannot reach the dispatcher".into()
    } else if e.is_timeout() {
        "the dispatcher did not answer in time".into()
    } else if e.is_decode() {
        format!("unexpected answer from the dispatcher: {e}")
    } else {
        format!("connection to the dispatcher failed: {e}")
    }
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with a bearer token.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        decode(r).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, String> {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        decode(r).await
    }

    /// A page of jobs, newest first, and the cursor of the next.
    pub async fn jobs(&self, cursor: Option<&str>) -> Result<(Vec<Job>, Option<String>), String> {
        #[derive(Deserialize)]
        struct Page {
            jobs: Vec<Job>,
            next_cursor: Option<String>,
        }
        let mut path = format!("{}/jobs?limit={PAGE}", http::API_PREFIX);
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let p: Page = self.get(&path).await?;
        Ok((p.jobs, p.next_cursor))
    }
}

async fn decode<T: DeserializeOwned>(r: reqwest::Response) -> Result<T, String> {
    let status = r.status();
    let body = r.text().await.map_err(|e| transport_error(&e))?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    serde_json::from_str(&body).map_err(|e| format!("unexpected answer from the dispatcher: {e}"))
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMsg {
    /// `event:` (default `message`).
    pub event: String,
    /// `data:` lines joined by `\n`.
    pub data: String,
    /// `id:`, when given.
    pub id: Option<String>,
}

/// An incremental `text/event-stream` parser (comments and unknown fields are skipped).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseMsg,
    has_data: bool,
}

impl SseParser {
    /// Feed bytes; returns the events completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseMsg> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let mut line = &self.buf[start..start + nl];
            start += nl + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line);
            if line.is_empty() {
                if self.has_data || !self.cur.event.is_empty() {
                    let mut m = std::mem::take(&mut self.cur);
                    if m.event.is_empty() {
                        m.event = "message".into();
                    }
                    out.push(m);
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.cur.event = value.to_string(),
                "id" => self.cur.id = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        self.buf.drain(..start);
        out
    }
}

fn send(tx: &UnboundedSender<Action>, n: Net) -> bool {
    tx.send(Action::Net(n)).is_ok()
}

/// Start the network tasks. Returns the sender the UI gives its [`Command`]s to.
pub fn spawn(
    client: Client,
    max_jobs: usize,
    tx: UnboundedSender<Action>,
) -> UnboundedSender<Command> {
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(events_loop(client.clone(), max_jobs, tx.clone()));
    tokio::spawn(commands(client, cmd_rx, tx));
    cmd_tx
}

/// Keep the event stream open: reconnect with backoff, resume from the last event id.
async fn events_loop(client: Client, max_jobs: usize, tx: UnboundedSender<Action>) {
    let mut cursor: Option<String> = None;
    let mut loaded = false;
    let mut attempt = 1;
    let mut backoff = Duration::from_millis(250);
    loop {
        if !send(&tx, Net::Connecting(attempt)) {
            return;
        }
        let mut live = false;
        let reason =
            stream_events(&client, max_jobs, &tx, &mut cursor, &mut loaded, &mut live).await;
        if tx.is_closed() {
            return;
        }
        if live {
            attempt = 1;
            backoff = Duration::from_millis(250);
        }
        send(
            &tx,
            Net::Disconnected {
                reason,
                retry_ms: backoff.as_millis() as u64,
            },
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

/// One connection of the event stream; returns why it ended.
async fn stream_events(
    client: &Client,
    max_jobs: usize,
    tx: &UnboundedSender<Action>,
    cursor: &mut Option<String>,
    loaded: &mut bool,
    live: &mut bool,
) -> String {
    let mut req = client
        .http
        .get(client.url(http::EVENTS_PATH))
        .bearer_auth(&client.token)
        .header("accept", "text/event-stream");
    if let Some(c) = cursor.as_deref() {
        req = req.header("last-event-id", c);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return transport_error(&e),
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return api_error(status, &body);
    }
    let sent = cursor.clone();
    // The job list was just reloaded at the hello: a `resync` that follows needs no second reload.
    let mut fresh = false;
    let mut parser = SseParser::default();
    loop {
        // Heartbeats come every few seconds; silence for much longer means the connection is dead.
        let chunk = match tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await {
            Err(_) => return "no heartbeat from the dispatcher".into(),
            Ok(Err(e)) => return transport_error(&e),
            Ok(Ok(None)) => return "the dispatcher closed the event stream".into(),
            Ok(Ok(Some(c))) => c,
        };
        for m in parser.feed(&chunk) {
            if let Some(id) = &m.id {
                *cursor = Some(id.clone());
            }
            let ev = match LiveEvent::parse(&m.event, &m.data) {
                Ok(Some(ev)) => ev,
                Ok(None) => continue,
                Err(e) => {
                    send(tx, Net::Outcome(Err(e)));
                    continue;
                }
            };
            match &ev {
                LiveEvent::Hello { cursor: c } => {
                    let reload = must_reload(sent.as_deref(), c, *loaded);
                    *cursor = Some(c.clone());
                    *live = true;
                    send(tx, Net::Live);
                    send(tx, Net::Event(ev));
                    if reload {
                        // Until the page is in, every reconnect reloads (a failed load is retried).
                        *loaded = false;
                        // Events after the hello queue up in the connection while the page loads.
                        if let Err(e) = load_first_page(client, max_jobs, tx).await {
                            return format!("loading jobs: {e}");
                        }
                        *loaded = true;
                        fresh = true;
                    }
                    continue;
                }
                LiveEvent::Resync { cursor: c, .. } => {
                    // Events were lost to this client: what it shows cannot be patched, only reloaded.
                    *cursor = Some(c.clone());
                    send(tx, Net::Event(ev));
                    if !std::mem::take(&mut fresh) {
                        *loaded = false;
                        if let Err(e) = load_first_page(client, max_jobs, tx).await {
                            return format!("reloading jobs: {e}");
                        }
                        *loaded = true;
                    }
                    continue;
                }
                LiveEvent::Job(_) => fresh = false,
                _ => {}
            }
            if !send(tx, Net::Event(ev)) {
                return "quit".into();
            }
        }
    }
}

/// Whether a connection whose `hello` says it starts after `hello` must reload the job list: on the
/// first load, and on any reconnect where the server does not confirm it continues from the event
/// the client asked after (`sent`) — it then cannot prove that no event was missed.
pub fn must_reload(sent: Option<&str>, hello: &str, loaded: bool) -> bool {
    !loaded || sent != Some(hello)
}

/// The first page of jobs (replacing what the UI shows), then older pages in the background.
async fn load_first_page(
    client: &Client,
    max_jobs: usize,
    tx: &UnboundedSender<Action>,
) -> Result<(), String> {
    let (jobs, next) = client.jobs(None).await?;
    send(tx, Net::Jobs { jobs, first: true });
    if let Some(next) = next {
        tokio::spawn(more_jobs(client.clone(), next, max_jobs, tx.clone()));
    }
    Ok(())
}

/// Older pages, up to `max_jobs` in all.
async fn more_jobs(client: Client, mut next: String, max_jobs: usize, tx: UnboundedSender<Action>) {
    let mut have = PAGE;
    while have < max_jobs {
        match client.jobs(Some(&next)).await {
            Ok((jobs, n)) => {
                have += jobs.len();
                if !send(&tx, Net::Jobs { jobs, first: false }) {
                    return;
                }
                match n {
                    Some(n) => next = n,
                    None => return,
                }
            }
            Err(e) => {
                send(&tx, Net::Outcome(Err(format!("loading older jobs: {e}"))));
                return;
            }
        }
    }
}

/// Carry out the UI's commands.
async fn commands(client: Client, mut rx: UnboundedReceiver<Command>, tx: UnboundedSender<Action>) {
    let mut log_task: Option<tokio::task::JoinHandle<()>> = None;
    let fetching: Arc<Mutex<HashSet<String>>> = Arc::default();
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    while let Some(c) = rx.recv().await {
        match c {
            Command::Quit => break,
            Command::Cancel(id) => {
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    let path = format!("{}/jobs/{id}/cancel", http::API_PREFIX);
                    let r = client.post::<Job>(&path, json!({})).await;
                    match r {
                        Ok(j) => {
                            let m = format!("cancel requested for {} (now {})", j.id, j.status);
                            send(&tx, Net::Job(Box::new(j)));
                            send(&tx, Net::Outcome(Ok(m)));
                        }
                        Err(e) => {
                            send(&tx, Net::Outcome(Err(format!("cancel {id}: {e}"))));
                        }
                    }
                });
            }
            Command::Retry(id) => {
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    let path = format!("{}/jobs/{id}/retry", http::API_PREFIX);
                    match client.post::<Job>(&path, json!({})).await {
                        Ok(j) => {
                            let m = format!("queued as {}: retry of {id}", j.id);
                            send(&tx, Net::Job(Box::new(j)));
                            send(&tx, Net::Outcome(Ok(m)));
                        }
                        Err(e) => {
                            send(&tx, Net::Outcome(Err(format!("retry {id}: {e}"))));
                        }
                    }
                });
            }
            Command::Submit { repo_url, git_ref } => {
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    let path = format!("{}/jobs", http::API_PREFIX);
                    let body = json!({"repo_url": repo_url, "ref": git_ref});
                    match client.post::<Job>(&path, body).await {
                        Ok(j) => {
                            let m = format!("queued as {}: {repo_url}", j.id);
                            send(&tx, Net::Job(Box::new(j)));
                            send(&tx, Net::Outcome(Ok(m)));
                        }
                        Err(e) => {
                            send(&tx, Net::Outcome(Err(format!("submit: {e}"))));
                        }
                    }
                });
            }
            Command::FetchJob(id) => {
                let fresh = fetching
                    .lock()
                    .map(|mut s| s.insert(id.clone()))
                    .unwrap_or(true);
                if !fresh {
                    continue;
                }
                let (client, tx, fetching, limit) =
                    (client.clone(), tx.clone(), fetching.clone(), limit.clone());
                tokio::spawn(async move {
                    let _permit = limit.acquire().await;
                    // Taken out before the request: an event during it fetches again.
                    if let Ok(mut s) = fetching.lock() {
                        s.remove(&id);
                    }
                    let path = format!("{}/jobs/{id}", http::API_PREFIX);
                    match client.get::<Job>(&path).await {
                        Ok(j) => {
                            send(&tx, Net::Job(Box::new(j)));
                        }
                        Err(e) => {
                            send(&tx, Net::Outcome(Err(format!("job {id}: {e}"))));
                        }
                    }
                });
            }
            Command::OpenLog(id) => {
                if let Some(t) = log_task.take() {
                    t.abort();
                }
                log_task = Some(tokio::spawn(tail_log(client.clone(), id, tx.clone())));
            }
            Command::CloseLog => {
                if let Some(t) = log_task.take() {
                    t.abort();
                }
            }
            Command::LoadSchedules => crate::schedules::load(client.clone(), tx.clone()),
            Command::LoadDead => {
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    #[derive(Deserialize)]
                    struct D {
                        dead_letters: Vec<DeadLetter>,
                    }
                    match client.get::<D>(http::DEAD_LETTERS_PATH).await {
                        Ok(d) => {
                            send(&tx, Net::Dead(d.dead_letters));
                        }
                        Err(e) => {
                            send(&tx, Net::Outcome(Err(format!("dead letters: {e}"))));
                        }
                    }
                });
            }
        }
    }
}

/// Load a job's log, then follow it live until the job is final; lines go out in batches.
async fn tail_log(client: Client, id: String, tx: UnboundedSender<Action>) {
    #[derive(Deserialize)]
    struct Page {
        status: Status,
        lines: Vec<LogLine>,
        truncated: bool,
    }
    const LIMIT: usize = 100_000;
    let mut after: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        // Everything there is now, page by page.
        let status = loop {
            let mut path = format!("{}/jobs/{id}/logs?limit={LIMIT}", http::API_PREFIX);
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            match client.get::<Page>(&path).await {
                Ok(p) => {
                    let full = p.lines.len() == LIMIT;
                    if let Some(l) = p.lines.last() {
                        after = Some(l.seq.clone());
                    }
                    if !p.lines.is_empty() || p.truncated {
                        send(
                            &tx,
                            Net::Log {
                                job: id.clone(),
                                lines: p.lines,
                                truncated: p.truncated,
                            },
                        );
                    }
                    if !full {
                        break Ok(p.status);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match status {
            Ok(s) if s.is_final() => {
                send(&tx, Net::LogEnd { job: id, status: s });
                return;
            }
            Ok(_) => {
                backoff = Duration::from_millis(250);
                if follow(&client, &id, &mut after, &tx).await {
                    return;
                }
            }
            Err(e) => {
                send(&tx, Net::Outcome(Err(format!("log of {id}: {e}"))));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follow the live log; true when the job ended (else the stream broke: reload and retry).
async fn follow(
    client: &Client,
    id: &str,
    after: &mut Option<String>,
    tx: &UnboundedSender<Action>,
) -> bool {
    let mut path = format!("{}/jobs/{id}/logs?follow=true", http::API_PREFIX);
    if let Some(a) = after.as_deref() {
        path.push_str(&format!("&after={a}"));
    }
    let mut resp = match client
        .http
        .get(client.url(&path))
        .bearer_auth(&client.token)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r,
        _ => return false,
    };
    let mut parser = SseParser::default();
    let mut batch: Vec<LogLine> = Vec::new();
    let mut due: Option<tokio::time::Instant> = None;
    let flush = |batch: &mut Vec<LogLine>| {
        if !batch.is_empty() {
            send(
                tx,
                Net::Log {
                    job: id.to_string(),
                    lines: std::mem::take(batch),
                    truncated: false,
                },
            );
        }
    };
    loop {
        let wait = due
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(Duration::from_secs(30));
        let chunk = match tokio::time::timeout(wait, resp.chunk()).await {
            Err(_) => {
                flush(&mut batch);
                due = None;
                if tx.is_closed() {
                    return true;
                }
                continue;
            }
            Ok(Ok(Some(c))) => c,
            Ok(_) => {
                flush(&mut batch);
                return false;
            }
        };
        for m in parser.feed(&chunk) {
            match m.event.as_str() {
                "log" => {
                    if let Ok(l) = serde_json::from_str::<LogLine>(&m.data) {
                        *after = Some(l.seq.clone());
                        batch.push(l);
                    }
                }
                "end" => {
                    flush(&mut batch);
                    #[derive(Deserialize)]
                    struct End {
                        status: Status,
                    }
                    if let Ok(e) = serde_json::from_str::<End>(&m.data) {
                        send(
                            tx,
                            Net::LogEnd {
                                job: id.to_string(),
                                status: e.status,
                            },
                        );
                    }
                    return true;
                }
                _ => {}
            }
        }
        if !batch.is_empty() && due.is_none() {
            due = Some(tokio::time::Instant::now() + LOG_BATCH);
        }
        if due.is_some_and(|d| d <= tokio::time::Instant::now()) {
            flush(&mut batch);
            due = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_comments_and_ids() {
        let mut p = SseParser::default();
        assert!(p
            .feed(b": keep-alive\n\nevent: job\nid: 1-0\nda")
            .is_empty());
        let got = p.feed(b"ta: {\"a\":1}\n\ndata: x\ndata: y\n\n");
        assert_eq!(
            got,
            vec![
                SseMsg {
                    event: "job".into(),
                    data: "{\"a\":1}".into(),
                    id: Some("1-0".into())
                },
                SseMsg {
                    event: "message".into(),
                    data: "x\ny".into(),
                    id: None
                },
            ]
        );
    }

    #[test]
    fn reload_unless_the_server_continues_where_the_client_stopped() {
        assert!(must_reload(None, "0-0", false), "first connection");
        assert!(
            must_reload(Some("5-0"), "5-0", false),
            "the first load failed"
        );
        assert!(!must_reload(Some("5-0"), "5-0", true), "continues");
        assert!(must_reload(Some("5-0"), "9-0", true), "the server moved on");
        assert!(
            must_reload(None, "9-0", true),
            "no cursor to prove anything"
        );
    }

    #[test]
    fn api_errors_in_words() {
        let e = api_error(
            reqwest::StatusCode::CONFLICT,
            r#"{"error":{"code":"conflict","message":"job X is running; only a finished job can be retried"}}"#,
        );
        assert_eq!(
            e,
            "job X is running; only a finished job can be retried (409)"
        );
        assert_eq!(
            api_error(reqwest::StatusCode::BAD_GATEWAY, "<html>"),
            "the dispatcher answered 502 Bad Gateway"
        );
    }
}
