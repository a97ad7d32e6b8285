//! `/mcp` at the protocol level, against the real dispatcher and a real Redis: the published tool schemas
//! (snapshotted, and in agreement with the handlers both ways: random inputs valid per each input schema
//! are accepted or refused with a tool error — never a protocol error — and every answer validates
//! against the tool's output schema), the Host / Origin / token guards, and `notify_url` deliveries
//! signed with `X-Raibid-Signature` from a real job run by a real agent.
//! (The client-level end-to-end suite with the official Python SDK is tests/mcp.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Duration;
use support::*;

const ACCEPT: &str = "application/json, text/event-stream";

/// One JSON-RPC call; the reply (JSON, or the last `data:` event of an SSE answer).
async fn rpc(env: &TestEnv, method: &str, params: Value) -> (u16, Value) {
    let r = env
        .http
        .post(env.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap();
    if ct.contains("text/event-stream") {
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .rfind(|d| d.contains("\"id\""))
            .unwrap_or("null");
        return (status, serde_json::from_str(last).unwrap_or(Value::Null));
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn tools(env: &TestEnv) -> Vec<Value> {
    let (s, v) = rpc(env, "tools/list", json!({})).await;
    assert_eq!(s, 200, "{v}");
    v["result"]["tools"].as_array().unwrap().clone()
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            let defs = root.get("$defs").or_else(|| root.get("definitions"));
            resolve(root, &defs.unwrap()[name])
        }
        None => s,
    }
}

fn types(s: &Value) -> Vec<String> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts.iter().map(|t| t.as_str().unwrap().to_string()).collect(),
        _ => Vec::new(),
    }
}

/// A random instance of schema `s` (the subset schemars emits: type / nullable types, properties,
/// required, items, enum, const, anyOf / oneOf, $ref, minimum / maximum).
fn gen(root: &Value, s: &Value, rng: &mut StdRng, field: &str, ids: &[String]) -> Value {
    let s = resolve(root, s);
    if let Some(Value::Array(opts)) = s.get("enum") {
        return opts[rng.gen_range(0..opts.len())].clone();
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    for k in ["anyOf", "oneOf"] {
        if let Some(Value::Array(opts)) = s.get(k) {
            let o = &opts[rng.gen_range(0..opts.len())];
            return gen(root, o, rng, field, ids);
        }
    }
    let ts = types(s);
    let t = if ts.is_empty() {
        "string".to_string()
    } else {
        ts[rng.gen_range(0..ts.len())].clone()
    };
    match t.as_str() {
        "null" => Value::Null,
        "boolean" => Value::Bool(rng.gen()),
        "integer" | "number" => {
            let min = s.get("minimum").and_then(Value::as_i64).unwrap_or(0);
            let max = s.get("maximum").and_then(Value::as_i64).unwrap_or(5_000);
            // Keep waits short: the property is about acceptance, not about waiting.
            let max = if field == "timeout_secs" {
                max.min(2)
            } else {
                max
            };
            json!(rng.gen_range(min..=max.max(min)))
        }
        "string" => Value::String(random_string(rng, field, ids)),
        "array" => {
            let n = rng.gen_range(0..3);
            let item = s.get("items").cloned().unwrap_or(json!({}));
            Value::Array((0..n).map(|_| gen(root, &item, rng, field, ids)).collect())
        }
        "object" => {
            let mut out = Map::new();
            let req: Vec<&str> = s
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(Value::Object(props)) = s.get("properties") {
                for (k, p) in props {
                    if req.contains(&k.as_str()) || rng.gen_bool(0.6) {
                        out.insert(k.clone(), gen(root, p, rng, k, ids));
                    }
                }
            }
            Value::Object(out)
        }
        other => panic!("schema type {other} not covered by the generator"),
    }
}

fn random_string(rng: &mut StdRng, field: &str, ids: &[String]) -> String {
    let pick = rng.gen_range(0..6);
    let junk: String = (0..rng.gen_range(0..40))
        .map(|_| char::from_u32(rng.gen_range(0x20..0x2500)).unwrap_or('x'))
        .collect();
    match (field, pick) {
        ("job_id" | "cursor", 0..=2) if !ids.is_empty() => ids[rng.gen_range(0..ids.len())].clone(),
        ("job_id", 3) => "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        ("repo_url", 0..=2) => "file:///nonexistent/repo.git".into(),
        ("ref", 0..=2) => "main".into(),
        ("search", 0..=2) => "error|warn".into(),
        ("search", 3) => "(unclosed".into(),
        ("patch", 0..=1) => "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n".into(),
        ("notify_url", 0..=1) => "http://10.0.0.1/x".into(),
        _ => junk,
    }
}

/// Check `v` against schema `s`; the path of the first disagreement.
fn validate(root: &Value, s: &Value, v: &Value, path: &str) -> Result<(), String> {
    let s = resolve(root, s);
    for k in ["anyOf", "oneOf"] {
        if let Some(Value::Array(opts)) = s.get(k) {
            if opts.iter().any(|o| validate(root, o, v, path).is_ok()) {
                return Ok(());
            }
            return Err(format!("{path}: {v} matches no alternative"));
        }
    }
    if let Some(Value::Array(opts)) = s.get("enum") {
        return if opts.contains(v) {
            Ok(())
        } else {
            Err(format!("{path}: {v} not in {opts:?}"))
        };
    }
    let ts = types(s);
    if !ts.is_empty() {
        let ok = ts.iter().any(|t| match t.as_str() {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "string" => v.is_string(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{path}: {v} is not {ts:?}"));
        }
    }
    if let (Some(Value::Object(props)), Value::Object(obj)) = (s.get("properties"), v) {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{path}.{r}: required but missing"));
            }
        }
        for (k, val) in obj {
            match props.get(k) {
                Some(p) => validate(root, p, val, &format!("{path}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{path}.{k}: not in the schema"))
                }
                None => {}
            }
        }
    }
    if let (Some(item), Value::Array(items)) = (s.get("items"), v) {
        for (i, it) in items.iter().enumerate() {
            validate(root, item, it, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tool_schemas_match_the_snapshot() {
    let env = spawn_app(Options::default()).await;
    let mut list = tools(&env).await;
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let got = serde_json::to_string_pretty(&Value::Array(list)).unwrap() + "\n";
    let snap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/mcp_tools.json");
    if std::env::var_os("RAIBID_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
        std::fs::write(&snap, &got).unwrap();
    }
    let want = std::fs::read_to_string(&snap).unwrap_or_default();
    assert!(
        want == got,
        "the published MCP tool schemas changed; if on purpose, rerun with RAIBID_UPDATE_SNAPSHOTS=1 and commit {}",
        snap.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_valid_inputs_are_accepted_or_refused_with_a_tool_error() {
    let env = spawn_app(Options::default()).await;
    // A real job to point some inputs at (queued, then cancelled: final, so waits return at once).
    let (s, j) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": "file:///nonexistent/repo.git", "ref": "main"}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    let (s, _) = env
        .api_post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 202);
    let ids = vec![id.clone(), format!("1-0@3")];
    let list = tools(&env).await;
    assert_eq!(list.len(), 15);
    let mut rng = StdRng::seed_from_u64(
        std::env::var("RAIBID_PROPTEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed),
    );
    let mut answered = 0;
    for tool in &list {
        let name = tool["name"].as_str().unwrap();
        let input = &tool["inputSchema"];
        let output = &tool["outputSchema"];
        assert_eq!(output["type"], "object", "{name}: no object output schema");
        for case in 0..40 {
            let args = gen(input, input, &mut rng, "", &ids);
            validate(input, input, &args, "args")
                .unwrap_or_else(|e| panic!("generator made an invalid input for {name}: {e}"));
            let (status, reply) = rpc(
                &env,
                "tools/call",
                json!({"name": name, "arguments": args.clone()}),
            )
            .await;
            assert_eq!(status, 200, "{name} {args}: HTTP {status} {reply}");
            assert!(
                reply.get("error").is_none(),
                "{name} case {case}: protocol error for an input valid per its schema: {args} → {reply}"
            );
            let result = &reply["result"];
            if result["isError"] == true {
                let text = result["content"][0]["text"].as_str().unwrap_or("");
                assert!(
                    !text.is_empty() && !text.contains("panicked"),
                    "{name}: {text}"
                );
                // rmcp turns an argument the handler's type cannot deserialize into a tool error: for
                // an input valid per the published schema that means schema and handler disagree.
                assert!(
                    !text.starts_with("failed to deserialize parameters"),
                    "{name} case {case}: the published schema accepts {args} but the handler's type does not: {text}"
                );
            } else {
                answered += 1;
                validate(output, output, &result["structuredContent"], name).unwrap_or_else(|e| {
                    panic!(
                        "{name}: answer disagrees with the published output schema: {e}\n{result}"
                    )
                });
            }
        }
    }
    assert!(
        answered > 30,
        "too few successful calls ({answered}) to check output schemas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_origin_and_host_are_checked_before_mcp() {
    let env = spawn_app(Options {
        settings: |s| {
            s.mcp_allowed_hosts = vec!["raibid-dispatcher.raibid-system".into()];
            s.mcp_allowed_origins = vec!["https://console.example.com".into()];
        },
        ..Options::default()
    })
    .await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let send = |token: Option<&'static str>, headers: Vec<(&'static str, &'static str)>| {
        let mut r = env
            .http
            .post(env.url("/mcp"))
            .header("accept", ACCEPT)
            .json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        for (k, v) in headers {
            r = r.header(k, v);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(None, vec![]).await, 401);
    assert_eq!(send(Some("wrong"), vec![]).await, 401);
    assert_eq!(
        send(None, vec![("origin", "https://evil.example")]).await,
        401
    );
    assert_eq!(
        send(Some(TOKEN), vec![("origin", "https://evil.example")]).await,
        403
    );
    assert_eq!(
        send(Some(TOKEN), vec![("origin", "https://console.example.com")]).await,
        200
    );
    assert_eq!(
        send(Some(TOKEN), vec![("host", "attacker.example")]).await,
        403
    );
    assert_eq!(
        send(
            Some(TOKEN),
            vec![("host", "raibid-dispatcher.raibid-system")]
        )
        .await,
        200
    );
    assert_eq!(send(Some(TOKEN), vec![]).await, 200);
    // The server's own loopback origin (same host and port) is a same-origin page: allowed (the
    // conformance suite's dns-rebinding scenario); another loopback port is not.
    let own = env.base.clone();
    let port = own.rsplit(':').next().unwrap().to_string();
    let host: &'static str = Box::leak(format!("127.0.0.1:{port}").into_boxed_str());
    let origin: &'static str = Box::leak(format!("http://127.0.0.1:{port}").into_boxed_str());
    assert_eq!(
        send(Some(TOKEN), vec![("host", host), ("origin", origin)]).await,
        200
    );
    assert_eq!(
        send(
            Some(TOKEN),
            vec![("host", host), ("origin", "http://127.0.0.1:1")]
        )
        .await,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_url_gets_the_signed_final_record() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(HeaderMap, Bytes)>(4);
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |h: HeaderMap, b: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((h, b)).await;
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", l.local_addr().unwrap());
    // An allowed host names its port (a bare host would allow only port 80).
    static HOOK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOOK.set(l.local_addr().unwrap().to_string()).unwrap();
    tokio::spawn(async move { axum::serve(l, hook).await });
    let env = spawn_app(Options {
        settings: |s| {
            s.notify_secret = Some("notify-secret-42".into());
            s.notify_allowed_hosts = vec![HOOK.get().unwrap().clone()];
        },
        ..Options::default()
    })
    .await;
    let repo = env.tmp.path().join("notify");
    let (url, _) = make_repo(
        &repo,
        &[(
            ".raibid.yaml",
            "steps:\n  - name: hello\n    run: echo hi\n",
        )],
    );
    let agent = env.start_agent("agent-notify");
    // A loopback URL is refused unless allowed; here 127.0.0.1 is allowed, localhost is not.
    let (s, v) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": url, "ref": "main", "notify_url": "http://localhost:9/x"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("notify_url:"));
    let (s, v) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": url, "ref": "main", "notify_url": hook_url}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (headers, body) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("no notification within 120 s")
        .unwrap();
    let sig = headers["x-raibid-signature"].to_str().unwrap();
    assert_eq!(
        sig,
        raibid_dispatcher::notify::sign(b"notify-secret-42", &body)
    );
    let job: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job.get("lease").is_none());
    agent.stop().await;
}

/// `calls=` of `cmdstat_<cmd>` in `INFO commandstats` (0 when the command never ran).
async fn redis_calls(con: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|r| r.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A queued job with a 10 MiB log (145,011 lines of ≈ 70 bytes, like the Python suite's flood job, the
/// last line `needle-in-the-log` in step `fail`), written straight into its log stream.
async fn job_with_a_10_mib_log(env: &TestEnv) -> (String, redis::aio::MultiplexedConnection) {
    let (url, _) = make_repo(&env.tmp.path().join("flood"), &[]);
    let (s, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = raibid_core::contract::job_log_key(&id);
    let ts = "2026-01-01T00:00:00.000Z";
    for start in (1..=145_010u32).step_by(1_000) {
        let mut p = redis::pipe();
        for i in start..(start + 1_000).min(145_011) {
            p.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("step")
                .arg("flood")
                .arg("stream")
                .arg("stdout")
                .arg("ts")
                .arg(ts)
                .arg("line")
                .arg(format!(
                    "{i} the quick brown fox jumps over the lazy dog, padding to seventy b"
                ))
                .ignore();
        }
        p.query_async::<()>(&mut con).await.unwrap();
    }
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("step")
        .arg("fail")
        .arg("stream")
        .arg("stdout")
        .arg("ts")
        .arg(ts)
        .arg("line")
        .arg("needle-in-the-log")
        .query_async(&mut con)
        .await
        .unwrap();
    (id, con)
}

async fn get_logs(env: &TestEnv, args: Value) -> Value {
    let (s, v) = rpc(
        env,
        "tools/call",
        json!({"name": "get_logs", "arguments": args}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["result"]["isError"] != json!(true), "{v}");
    v["result"]["structuredContent"].clone()
}

/// The search reads the log in a few large batches (counted as Redis XRANGE calls), not line by line or
/// in small pages, and a search that fills its answer stops reading at once and says where to continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_search_over_a_10_mib_log_reads_it_in_a_few_large_batches() {
    let env = spawn_app(Options::default()).await;
    let (id, mut con) = job_with_a_10_mib_log(&env).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let a = get_logs(
        &env,
        json!({"job_id": id, "search": "^needle-in-the-log$", "context": 2}),
    )
    .await;
    let took = t0.elapsed();
    let xrange = redis_calls(&mut con, "xrange").await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    let redis_side: Vec<&str> = info.lines().filter(|l| l.starts_with("cmdstat_")).collect();
    eprintln!("search over 145,011 lines: {took:?}, {xrange} XRANGE call(s); {redis_side:?}");
    assert_eq!(a["matches"], 1, "{a}");
    assert_eq!(a["total_lines"], 145_011);
    assert_eq!(a["scanned_lines"], 145_011);
    let lines = a["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{a}");
    assert_eq!(lines[2]["n"], 145_011);
    assert_eq!(lines[2]["hit"], true);
    assert!(lines[0]["text"].as_str().unwrap().starts_with("145009 "));
    assert!(a["next"].is_null(), "{a}");
    // Batches grow to 8,192 entries: 2,000 + 8,000 + 17 × 8,192 ≥ 145,011, i.e. 19 reads (the old
    // 5,000-entry pages took 30; a line-by-line read would take 145,011).
    assert!(
        xrange <= 20,
        "a 145,011-line search took {xrange} XRANGE round trips (batches of up to 8,192 expected)"
    );

    // Every line matches: the answer fills after a few hundred lines; the scan stops in its first batch.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let a = get_logs(
        &env,
        json!({"job_id": id, "search": "fox", "max_matches": 500}),
    )
    .await;
    let xrange = redis_calls(&mut con, "xrange").await;
    let scanned = a["scanned_lines"].as_u64().unwrap();
    let last = a["lines"].as_array().unwrap().last().unwrap()["n"]
        .as_u64()
        .unwrap();
    assert!(a["next"]["cursor"].is_string(), "{a}");
    assert_eq!(a["next"]["from_line"], last + 1, "{a}");
    assert!(
        scanned <= last + 1,
        "scanned {scanned} lines past the answer's end {last}"
    );
    assert!(
        xrange <= 1,
        "a search stopping at line {last} made {xrange} XRANGE calls"
    );
    // The cursor continues exactly after the last line returned.
    let b = get_logs(
        &env,
        json!({"job_id": id, "search": "fox", "max_matches": 500, "cursor": a["next"]["cursor"]}),
    )
    .await;
    assert_eq!(b["lines"][0]["n"], last + 1, "{b}");
}

/// One `tools/call`: the HTTP body's size in bytes (what the client receives: the structured content
/// and its text copy, in the JSON-RPC envelope) and the parsed reply.
async fn call_wire(env: &TestEnv, name: &str, args: &Value) -> (usize, Value) {
    let r = env
        .http
        .post(env.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{name} {args}");
    let body = r.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    let json_part = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|d| d.contains("\"id\""))
        .map(str::to_string)
        .unwrap_or_else(|| text.to_string());
    (
        body.len(),
        serde_json::from_str(&json_part).unwrap_or(Value::Null),
    )
}

/// A line that costs the most on the wire per byte: quotes, backslashes and control characters are
/// escaped once in the structured content and twice in its text copy.
fn escaped_junk(n: usize) -> String {
    "\"\\\u{1}é\t<>&".chars().cycle().take(n).collect()
}

/// Adversarial jobs written straight into Redis: a failed job with 1,500 steps, a 60 kB failure
/// reason, 300 warnings and 5 errors with 4 KiB snippets, 1,000 failing tests with 4 KiB outputs, a log
/// of wide escaped lines; a running job with 1,500 steps; 200 more finished jobs with 200 steps and
/// 10 kB reasons each. Returns (failed id, running id, repo url, name of the failed job's first step).
/// 300 schedules with the largest pipeline variants the API accepts (32 variables, values cut to 200
/// bytes by the tool): far over the answer budget as a whole.
async fn adversarial_schedules(env: &TestEnv) {
    let mut con = env.queue.redis();
    let mut p = redis::pipe();
    for i in 0..300 {
        let s = raibid_core::schedule::Schedule {
            id: raibid_core::schedule::new_schedule_id(),
            repo_url: format!("file:///srv/{}/{i}", "r".repeat(400)),
            git_ref: format!("refs/heads/{}", "b".repeat(200)),
            cron: "*/5 * * * * *".into(),
            timezone: "America/Argentina/ComodRivadavia".into(),
            env: (0..raibid_core::schedule::MAX_VARIANT_VARS)
                .map(|k| (format!("VAR_{k}"), "\"".repeat(4096)))
                .collect(),
            skip_unchanged: true,
            created: chrono::Utc::now(),
        };
        p.cmd("HSET")
            .arg(raibid_core::contract::schedule_key(&s.id))
            .arg("record")
            .arg(serde_json::to_string(&s).unwrap())
            .arg("paused")
            .arg("1")
            .ignore()
            .cmd("ZADD")
            .arg(raibid_core::contract::keys::SCHEDULES)
            .arg(i)
            .arg(&s.id)
            .ignore();
    }
    let _: () = p.query_async(&mut con).await.unwrap();
}

async fn adversarial_jobs(env: &TestEnv) -> (String, String, String, String) {
    use raibid_core::cargo_messages::{CompilerMessage, Diagnostics, FailingTest};
    use raibid_core::job::{Status, StepResult};
    let (url, _) = make_repo(&env.tmp.path().join("adversary"), &[]);
    let mut ids = Vec::new();
    for i in 0..203 {
        let r = if i % 2 == 0 { "main" } else { "dev" };
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": r}))
            .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let steps = |n: usize, failed: bool| -> Vec<StepResult> {
        (0..n)
            .map(|i| StepResult {
                name: format!("step-{i:04}-{}", "x".repeat(40)),
                status: if failed && i == n - 1 {
                    "failed"
                } else {
                    "succeeded"
                }
                .into(),
                exit_code: Some(if failed && i == n - 1 { 101 } else { 0 }),
                duration_ms: Some(1234),
                started_at: Some(chrono::Utc::now()),
            })
            .collect()
    };
    let big_steps = steps(1500, true);
    let failed_step = big_steps.last().unwrap().name.clone();
    let first_step = big_steps[0].name.clone();
    let (failed, running) = (ids[0].clone(), ids[1].clone());
    let fs = failed_step.clone();
    let bs = big_steps.clone();
    env.queue
        .modify(&failed, move |j| {
            j.status = Status::Failed;
            j.step = Some(fs.clone());
            j.steps = bs.clone();
            j.failure_reason = Some(escaped_junk(60_000));
            j.source.sha = Some("a".repeat(40));
            j.timestamps.finished = Some(chrono::Utc::now());
            Ok(Some("job_finished"))
        })
        .await
        .unwrap();
    let bs = steps(1500, false);
    env.queue
        .modify(&running, move |j| {
            j.status = Status::Running;
            j.step = bs.last().map(|s| s.name.clone());
            j.steps = bs.clone();
            Ok(Some("job_started"))
        })
        .await
        .unwrap();
    // The same commit passed once: every failing test of the failed job is flaky.
    env.queue
        .modify(&ids[2], |j| {
            j.status = Status::Succeeded;
            j.source.sha = Some("a".repeat(40));
            j.timestamps.finished = Some(chrono::Utc::now());
            Ok(Some("job_finished"))
        })
        .await
        .unwrap();
    let small = steps(200, true);
    for id in &ids[3..] {
        let s = small.clone();
        env.queue
            .modify(id, move |j| {
                j.status = Status::Failed;
                j.step = s.last().map(|s| s.name.clone());
                j.steps = s.clone();
                j.failure_reason = Some(escaped_junk(10_000));
                j.timestamps.finished = Some(chrono::Utc::now());
                Ok(Some("job_finished"))
            })
            .await
            .unwrap();
    }
    let msg = |level: &str, i: usize| CompilerMessage {
        level: level.into(),
        code: Some(format!("E{i:04}")),
        message: format!("message {i} {}", escaped_junk(200)),
        file: Some(format!("src/{}.rs", "d".repeat(100))),
        line: Some(i as u32 + 1),
        column: Some(5),
        rendered: Some(escaped_junk(4096)),
        target: Some("adversary".into()),
        step: Some(failed_step.clone()),
        count: 3,
        suggestions: vec![],
    };
    let mut compiler: Vec<CompilerMessage> = (0..300).map(|i| msg("warning", i)).collect();
    compiler.extend((0..5).map(|i| msg("error", 1000 + i)));
    let tests = (0..1000)
        .map(|i| FailingTest {
            name: format!("tests::case_{i}_{}", "n".repeat(100)),
            panic_message: Some(escaped_junk(2048)),
            file: Some("tests/adversary.rs".into()),
            line: Some(7),
            column: Some(9),
            output: escaped_junk(4096),
            output_truncated: true,
            step: Some(failed_step.clone()),
        })
        .collect();
    let d = Diagnostics {
        compiler,
        tests,
        dropped: 0,
        cargo_json_seen: true,
    };
    // Large writes on a loaded machine: no client-side response timeout.
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(raibid_core::contract::job_diagnostics_key(&failed))
        .arg(serde_json::to_string(&d).unwrap())
        .query_async(&mut con)
        .await
        .unwrap();
    // The log: 3,000 lines of 3,000 escaped bytes (over the per-line cut), mostly in the failed step.
    let key = raibid_core::contract::job_log_key(&failed);
    let wide = escaped_junk(3_000);
    for chunk in 0..10 {
        let mut p = redis::pipe();
        for i in chunk * 300..(chunk + 1) * 300 {
            let step = if i < 500 {
                first_step.as_str()
            } else {
                failed_step.as_str()
            };
            p.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("step")
                .arg(step)
                .arg("stream")
                .arg("stdout")
                .arg("ts")
                .arg("2026-01-01T00:00:00.000Z")
                .arg("line")
                .arg(&wide)
                .ignore();
        }
        p.query_async::<()>(&mut con).await.unwrap();
    }
    (failed, running, url, first_step)
}

/// The worst-case answer size of every tool under adversarial jobs: the whole tool result as the
/// client receives it (structured content and its text copy) stays within the budget (≈ 25k tokens).
/// Prints one line per tool (for docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_fits_the_budget_under_adversarial_jobs() {
    const WIRE_BUDGET: usize = raibid_dispatcher::mcp::budget::WIRE_BUDGET_BYTES;
    let env = spawn_app(Options::default()).await;
    let (failed, running, url, first_step) = adversarial_jobs(&env).await;
    adversarial_schedules(&env).await;
    let cases: Vec<(&str, Value)> = vec![
        ("submit_job", json!({"repo_url": url, "ref": "main"})),
        ("wait_for_job", json!({"job_id": failed, "timeout_secs": 1})),
        (
            "wait_for_job",
            json!({"job_id": running, "timeout_secs": 1}),
        ),
        ("get_job", json!({"job_id": failed})),
        ("get_job", json!({"job_id": running})),
        ("get_diagnostics", json!({"job_id": failed})),
        (
            "get_diagnostics",
            json!({"job_id": failed, "limit": 500, "min_level": "help"}),
        ),
        (
            "get_diagnostics",
            json!({"job_id": failed, "offset": 3, "limit": 500, "rendered": true}),
        ),
        ("get_logs", json!({"job_id": failed})),
        (
            "get_logs",
            json!({"job_id": failed, "from_line": 1, "max_lines": 2000}),
        ),
        (
            "get_logs",
            json!({"job_id": failed, "search": ".", "context": 10, "max_matches": 500}),
        ),
        (
            "get_logs",
            json!({"job_id": failed, "step": first_step, "max_lines": 2000}),
        ),
        ("list_jobs", json!({"limit": 5})),
        ("list_jobs", json!({"limit": 500})),
        (
            "list_jobs",
            json!({"limit": 500, "status": "failed", "ref": "main"}),
        ),
        ("cancel_job", json!({"job_id": running})),
        ("retry_job", json!({"job_id": failed})),
        ("queue_status", json!({})),
        ("get_failure_summary", json!({"job_id": failed})),
        (
            "get_failure_summary",
            json!({"job_id": failed, "warnings": true, "tail_lines": 200}),
        ),
        (
            "validate_config",
            json!({"config": format!("steps:\n{}", (0..700).map(|i| format!("  - name: s{i}\n    run: echo {i} {}\n", "x".repeat(300))).collect::<String>())}),
        ),
        ("validate_config", json!({"config": escaped_junk(200_000)})),
        ("find_flaky_tests", json!({"jobs": 1000})),
        (
            "get_test_history",
            json!({"test": "tests::case_0_".to_string() + &"n".repeat(100), "jobs": 1000}),
        ),
        ("cleanup", json!({"job_id": failed})),
        ("list_schedules", json!({})),
    ];
    let names: Vec<String> = tools(&env)
        .await
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    for n in &names {
        assert!(
            cases.iter().any(|(c, _)| c == n),
            "tool {n} has no adversarial case: add one"
        );
    }
    let mut worst: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut over = Vec::new();
    for (name, args) in &cases {
        if !names.iter().any(|n| n == name) {
            continue;
        }
        let (bytes, reply) = call_wire(&env, name, args).await;
        assert!(reply.get("error").is_none(), "{name} {args}: {reply}");
        let is_err = reply["result"]["isError"] == true;
        let shown: String = args.to_string().chars().take(120).collect();
        eprintln!(
            "{name:<20} {bytes:>9} B ≈ {:>6} tokens{} {shown}",
            bytes / 3,
            if is_err { " (tool error)" } else { "" }
        );
        let w = worst.entry(name).or_default();
        *w = (*w).max(bytes);
        if bytes > WIRE_BUDGET {
            over.push(format!("{name} {args}: {bytes} B"));
        }
    }
    eprintln!("worst case per tool (wire bytes, ≈ tokens at 3 B/token):");
    for (n, b) in &worst {
        eprintln!("| `{n}` | {b} | {} |", b / 3);
    }
    assert!(
        over.is_empty(),
        "answers over the {WIRE_BUDGET}-byte budget: {over:#?}"
    );
}

/// `get_failure_summary` on a job with 50 warnings, one compiler error with a machine-applicable fix
/// and a failing test: the failing step and its exit first, the error before any warning (warnings only
/// counted), the test's assertion text, the suggestion as data, and the step's last lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_failure_summary_puts_the_failure_first() {
    use raibid_core::cargo_messages::{CompilerMessage, Diagnostics, FailingTest, Suggestion};
    use raibid_core::job::{Status, StepResult};
    let env = spawn_app(Options::default()).await;
    let (url, _) = make_repo(&env.tmp.path().join("summary"), &[]);
    let (s, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    env.queue
        .modify(&id, |j| {
            j.status = Status::Failed;
            j.step = Some("test".into());
            j.steps = ["clone", "config", "build", "test"]
                .iter()
                .map(|n| StepResult {
                    name: n.to_string(),
                    status: if *n == "test" { "failed" } else { "succeeded" }.into(),
                    exit_code: Some(if *n == "test" { 101 } else { 0 }),
                    duration_ms: Some(10),
                    started_at: None,
                })
                .collect();
            j.failure_reason = Some("step `test` exited with code 101".into());
            Ok(Some("job_finished"))
        })
        .await
        .unwrap();
    let warn = |i: u32| CompilerMessage {
        level: "warning".into(),
        code: Some("unused_variables".into()),
        message: format!("unused variable: `x{i}`"),
        file: Some("src/lib.rs".into()),
        line: Some(i),
        column: Some(9),
        rendered: Some(format!("warning: unused variable: `x{i}`")),
        target: Some("demo".into()),
        step: Some("build".into()),
        count: 1,
        suggestions: vec![],
    };
    let mut compiler: Vec<CompilerMessage> = (1..=50).map(warn).collect();
    compiler.push(CompilerMessage {
        level: "error".into(),
        code: Some("E0308".into()),
        message: "mismatched types".into(),
        line: Some(2),
        column: Some(18),
        rendered: Some("error[E0308]: mismatched types".into()),
        suggestions: vec![Suggestion {
            message: "try using a conversion method".into(),
            file: "src/lib.rs".into(),
            line_start: 2,
            column_start: 18,
            line_end: 2,
            column_end: 25,
            replacement: "\"hello\".to_string()".into(),
            applicability: Some("MachineApplicable".into()),
        }],
        ..warn(0)
    });
    let d = Diagnostics {
        compiler,
        tests: vec![FailingTest {
            name: "tests::adds".into(),
            panic_message: Some(
                "assertion `left == right` failed: two and two\n  left: 0\n right: 4".into(),
            ),
            file: Some("src/lib.rs".into()),
            line: Some(8),
            column: Some(9),
            output: "checking add\n".into(),
            output_truncated: false,
            step: Some("test".into()),
        }],
        dropped: 0,
        cargo_json_seen: true,
    };
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(raibid_core::contract::job_diagnostics_key(&id))
        .arg(serde_json::to_string(&d).unwrap())
        .query_async(&mut con)
        .await
        .unwrap();
    let key = raibid_core::contract::job_log_key(&id);
    for (step, line) in [
        ("build", "compiling"),
        ("test", "running 1 test"),
        ("test", "test result: FAILED. 0 passed; 1 failed"),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("step")
            .arg(step)
            .arg("stream")
            .arg("stdout")
            .arg("ts")
            .arg("2026-01-01T00:00:00.000Z")
            .arg("line")
            .arg(line)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let (bytes, r) = call_wire(&env, "get_failure_summary", &json!({"job_id": id})).await;
    let a = &r["result"]["structuredContent"];
    assert!(r["result"]["isError"] != true, "{r}");
    assert_eq!(a["failed_step"]["name"], "test", "{a}");
    assert_eq!(a["failed_step"]["exit_code"], 101, "{a}");
    assert_eq!(a["errors"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["errors"][0]["code"], "E0308");
    assert_eq!(
        a["errors"][0]["suggestions"][0]["applicability"],
        "MachineApplicable"
    );
    assert_eq!(
        a["errors"][0]["suggestions"][0]["replacement"],
        "\"hello\".to_string()"
    );
    assert_eq!(a["warnings_total"], 50);
    assert_eq!(
        a["warnings"].as_array().unwrap().len(),
        0,
        "warnings only as a count"
    );
    assert!(a["failing_tests"][0]["assertion"]
        .as_str()
        .unwrap()
        .contains("left: 0"));
    let tail = a["tail"]["lines"].as_array().unwrap();
    assert_eq!(tail.len(), 2, "{a}");
    assert!(tail[1]["text"]
        .as_str()
        .unwrap()
        .starts_with("test result: FAILED"));
    assert!(bytes / 3 < 2_000, "{bytes} bytes");
    // Asked for, the warnings come too (after the error, in their own list).
    let (_, r) = call_wire(
        &env,
        "get_failure_summary",
        &json!({"job_id": id, "warnings": true}),
    )
    .await;
    assert_eq!(
        r["result"]["structuredContent"]["warnings"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
}

/// `list_jobs` filters before paging, from the queue's indexes: 3 `main` jobs among 1,500 `dev` ones
/// come in full pages with an honest `next_cursor` (null on the last page), reading only their index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_jobs_filters_before_paging_from_an_index() {
    let env = spawn_app(Options::default()).await;
    let (url, _) = make_repo(&env.tmp.path().join("many"), &[]);
    // The first filtered listing builds the indexes for older records, once (nothing here yet; see
    // older_records_are_indexed_on_the_first_filtered_list): from then on the write scripts keep them.
    let (_, r) = call_wire(&env, "list_jobs", &json!({"ref": "main"})).await;
    assert_eq!(r["result"]["structuredContent"]["jobs"], json!([]), "{r}");
    let mut main_ids = Vec::new();
    for i in 0..1_503 {
        let r = if i % 500 == 7 { "main" } else { "dev" };
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": r}))
            .await;
        assert_eq!(s, 201, "{v}");
        if r == "main" {
            main_ids.push(v["id"].as_str().unwrap().to_string());
        }
    }
    // Cancel one main job: the status index follows.
    let (s, _) = env
        .api_post(&format!("/api/v1/jobs/{}/cancel", main_ids[0]), json!({}))
        .await;
    assert_eq!(s, 202);
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let call = |args: Value| {
        let env = &env;
        async move {
            let (_, r) = call_wire(env, "list_jobs", &args).await;
            assert!(r["result"]["isError"] != true, "{r}");
            r["result"]["structuredContent"].clone()
        }
    };
    let p1 = call(json!({"ref": "main", "limit": 2})).await;
    assert_eq!(p1["jobs"].as_array().unwrap().len(), 2, "{p1}");
    assert!(p1["next_cursor"].is_string(), "{p1}");
    let p2 = call(json!({"ref": "main", "limit": 2, "cursor": p1["next_cursor"]})).await;
    assert_eq!(p2["jobs"].as_array().unwrap().len(), 1, "{p2}");
    assert!(
        p2["next_cursor"].is_null(),
        "the last page has no cursor: {p2}"
    );
    let hgets = redis_calls(&mut con, "hget").await;
    assert!(
        hgets <= 6,
        "listing 3 jobs of one ref read {hgets} records (a scan?)"
    );
    // No match at all: no jobs and no cursor.
    let none = call(json!({"ref": "nope", "limit": 5})).await;
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
    assert!(none["next_cursor"].is_null(), "{none}");
    // Status and ref together; status alone.
    let c = call(json!({"ref": "main", "status": "cancelled"})).await;
    assert_eq!(c["jobs"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["jobs"][0]["id"], main_ids[0].as_str());
    assert!(c["next_cursor"].is_null());
    // Paging through every queued dev job, 500 at a time (the budget may shorten a page: follow the
    // cursor until it ends) finds each exactly once.
    let mut seen = std::collections::HashSet::new();
    let mut cursor = Value::Null;
    loop {
        let mut args = json!({"ref": "dev", "status": "queued", "limit": 500});
        if !cursor.is_null() {
            args["cursor"] = cursor.clone();
        }
        let p = call(args).await;
        for j in p["jobs"].as_array().unwrap() {
            assert_eq!(j["ref"], "refs/heads/dev");
            assert!(
                seen.insert(j["id"].as_str().unwrap().to_string()),
                "{j} twice"
            );
        }
        cursor = p["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen.len(), 1_500);
}

/// Records written before the per-status and per-ref indexes existed are listed by filters too: the
/// first filtered listing builds the indexes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn older_records_are_indexed_on_the_first_filtered_list() {
    let env = spawn_app(Options::default()).await;
    let (url, _) = make_repo(&env.tmp.path().join("old"), &[]);
    for i in 0..30 {
        let r = if i % 3 == 0 { "main" } else { "dev" };
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": r}))
            .await;
        assert_eq!(s, 201, "{v}");
        if i < 6 {
            let id = v["id"].as_str().unwrap();
            let (s, _) = env
                .api_post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
                .await;
            assert_eq!(s, 202);
        }
    }
    // As before the indexes existed: only the main index.
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("raibid:jobs:index:*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys.len() >= 4, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();
    let (_, r) = call_wire(
        &env,
        "list_jobs",
        &json!({"ref": "main", "status": "cancelled", "limit": 100}),
    )
    .await;
    let a = &r["result"]["structuredContent"];
    assert_eq!(a["jobs"].as_array().unwrap().len(), 2, "{a}");
    let (_, r) = call_wire(
        &env,
        "list_jobs",
        &json!({"status": "queued", "limit": 100}),
    )
    .await;
    assert_eq!(
        r["result"]["structuredContent"]["jobs"]
            .as_array()
            .unwrap()
            .len(),
        24
    );
    let built: bool = redis::cmd("EXISTS")
        .arg(raibid_core::contract::keys::JOB_LIST_INDEXES_BUILT)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(built);
}

/// `get_logs` with a step the job does not have is a tool error listing its steps; `queue_status`
/// after cancels says which part of the lag belongs to cancelled jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_step_is_an_error_and_queue_status_explains_cancelled_lag() {
    let env = spawn_app(Options::default()).await;
    let (url, _) = make_repo(&env.tmp.path().join("q"), &[]);
    let mut ids = Vec::new();
    for _ in 0..12 {
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        assert_eq!(s, 201);
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    env.queue
        .modify(&ids[0], |j| {
            j.steps = ["clone", "build"]
                .iter()
                .map(|n| raibid_core::job::StepResult {
                    name: n.to_string(),
                    status: "succeeded".into(),
                    exit_code: Some(0),
                    duration_ms: Some(1),
                    started_at: None,
                })
                .collect();
            Ok(Some("job_updated"))
        })
        .await
        .unwrap();
    let (_, r) = call_wire(
        &env,
        "get_logs",
        &json!({"job_id": ids[0], "step": "biuld"}),
    )
    .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("no step `biuld`") && text.contains("clone, build"),
        "{text}"
    );
    for id in &ids[2..] {
        let (_, r) = call_wire(&env, "cancel_job", &json!({"job_id": id})).await;
        assert_eq!(
            r["result"]["structuredContent"]["status"], "cancelled",
            "{r}"
        );
    }
    let (_, r) = call_wire(&env, "queue_status", &json!({})).await;
    let q = &r["result"]["structuredContent"];
    assert_eq!(q["queued"], 2, "{q}");
    assert_eq!(q["lag"], 12, "{q}");
    assert_eq!(q["cancelled_waiting"], 10, "{q}");
}

/// `tools/list` is small and portable: no non-standard formats, `submit_job.image` has a schema,
/// `repo_url` names what this dispatcher accepts, and the whole list of 14 tools stays under 50 kB (the 10 tools of before took 72.7 kB).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tool_list_is_small_and_portable() {
    let env = spawn_app(Options::default()).await;
    let list = tools(&env).await;
    let text = serde_json::to_string(&list).unwrap();
    for f in [
        "uint32", "uint64", "int32", "int64", "double", "uint8", "uint16", "uint",
    ] {
        assert!(
            !text.contains(&format!("\"format\":\"{f}\"")),
            "non-standard format {f} in tools/list"
        );
    }
    let submit = list.iter().find(|t| t["name"] == "submit_job").unwrap();
    let image = &submit["inputSchema"]["properties"]["image"];
    assert_eq!(image["properties"]["name"]["type"], "string", "{image}");
    assert!(!image["description"]
        .as_str()
        .unwrap()
        .contains("raibid_core"));
    let repo = submit["inputSchema"]["properties"]["repo_url"]["description"]
        .as_str()
        .unwrap();
    assert!(repo.contains("file, http, https, ssh"), "{repo}");
    let (_, raw) = rpc(&env, "tools/list", json!({})).await;
    let size = serde_json::to_string(&raw).unwrap().len();
    eprintln!("tools/list: {size} bytes");
    // A coding agent reads the whole list into its context: ≈ 16k tokens at most for every tool with its
    // input and output schemas (get_job's output schema, the whole job record, is the largest).
    assert!(size < 64_000, "tools/list is {size} bytes");
}

/// The HTTP boundary: a 401 challenges for a bearer token (RFC 6750); malformed JSON is -32700,
/// a message without a method -32600, `arguments` that is not an object -32602, each with HTTP 400;
/// `initialize` asking for 2026-07-28 (a revision without `initialize`) gets 2025-11-25, as docs/mcp.md says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_boundary_speaks_json_rpc_and_bearer() {
    let env = spawn_app(Options::default()).await;
    let post = |token: Option<&'static str>, body: &'static str| {
        let mut r = env
            .http
            .post(env.url("/mcp"))
            .header("accept", ACCEPT)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, challenge, v)
        }
    };
    let (s, ch, _) = post(None, "{}").await;
    assert_eq!(s, 401);
    assert_eq!(ch.as_deref(), Some("Bearer realm=\"raibid\""));
    let (s, _, v) = post(Some(TOKEN), "{not json").await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32700)), "{v}");
    let (s, _, v) = post(Some(TOKEN), r#"{"jsonrpc": "2.0", "id": 3}"#).await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32600)), "{v}");
    assert_eq!(v["id"], 3);
    let (s, _, v) = post(
        Some(TOKEN),
        r#"{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "get_job", "arguments": "{\"job_id\": \"x\"}"}}"#,
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32602)), "{v}");
    let (s, v) = rpc(
        &env,
        "initialize",
        json!({"protocolVersion": "2026-07-28", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25", "{v}");
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/mcp.md"))
            .unwrap();
    assert!(
        doc.contains("`initialize` negotiates up to **2025-11-25**"),
        "docs/mcp.md must say what initialize negotiates"
    );
}

/// Submit through MCP and wait until final; the job id.
async fn run_job(env: &TestEnv, url: &str) -> String {
    let (_, r) = call_wire(env, "submit_job", &json!({"repo_url": url, "ref": "main"})).await;
    let id = r["result"]["structuredContent"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    for _ in 0..30 {
        let (_, w) = call_wire(
            env,
            "wait_for_job",
            &json!({"job_id": id, "timeout_secs": 20}),
        )
        .await;
        let w = &w["result"]["structuredContent"];
        assert!(
            w.get("job").is_none(),
            "wait_for_job answers a compact status: {w}"
        );
        if w["finished"] == true {
            return id;
        }
    }
    panic!("job {id} did not finish");
}

/// The one-call failure summary of three real jobs run by a real agent (real git, real cargo): a
/// compile error (rustc's fix as data), a failing test (its assertion), a failing custom step (its
/// last lines); each under 2k tokens on the wire. Printed for docs/mcp.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_summaries_of_real_jobs() {
    let env = spawn_app(Options::default()).await;
    let agent = env.start_agent("agent-summary");
    let compile = "pub fn greet(name: &str) -> String {\n    let unused = 1;\n    name\n}\n";
    let failing = "pub fn sum(xs: &[i64]) -> i64 {\n    xs.iter().sum::<i64>() + 1\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn sums() {\n        assert_eq!(super::sum(&[1, 2, 3]), 6, \"one two three\");\n    }\n}\n";
    let custom = "steps:\n  - name: lint\n    run: \"echo checking 3 files; echo 'src/lib.rs:3: TODO left in' >&2; exit 3\"\n";
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        ("compile", vec![("src/lib.rs", compile)]),
        ("test", vec![("src/lib.rs", failing)]),
        ("custom", vec![(".raibid.yaml", custom)]),
    ];
    for (name, files) in cases {
        let (url, _) = make_repo(&env.tmp.path().join(name), &files);
        let id = run_job(&env, &url).await;
        let (bytes, r) = call_wire(&env, "get_failure_summary", &json!({"job_id": id})).await;
        let s = &r["result"]["structuredContent"];
        eprintln!(
            "--- {name}: {bytes} B ≈ {} tokens\n{}",
            bytes / 3,
            serde_json::to_string_pretty(s).unwrap()
        );
        assert_eq!(s["status"], "failed", "{s}");
        assert!(bytes / 3 < 2_000, "{name}: {bytes} bytes");
        match name {
            "compile" => {
                assert_eq!(s["failed_step"]["name"], "build", "{s}");
                assert_eq!(s["errors"][0]["code"], "E0308", "{s}");
                assert_eq!(s["warnings"].as_array().unwrap().len(), 0);
                let sugg = s["errors"][0]["suggestions"].as_array().unwrap();
                assert!(
                    sugg.iter().any(|x| x["replacement"]
                        .as_str()
                        .unwrap_or("")
                        .contains("to_string")),
                    "{s}"
                );
            }
            "test" => {
                assert_eq!(s["failed_step"]["name"], "test", "{s}");
                let t = &s["failing_tests"][0];
                assert_eq!(t["name"], "tests::sums", "{s}");
                assert!(
                    t["assertion"].as_str().unwrap().contains("one two three"),
                    "{s}"
                );
            }
            _ => {
                assert_eq!(s["failed_step"]["name"], "lint", "{s}");
                assert_eq!(s["failed_step"]["exit_code"], 3, "{s}");
                let tail: Vec<&str> = s["tail"]["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["text"].as_str().unwrap())
                    .collect();
                assert!(tail.iter().any(|l| l.contains("TODO left in")), "{tail:?}");
            }
        }
    }
    agent.stop().await;
}

/// `validate_config` answers a pipeline's errors with key paths, without a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_config_names_the_key() {
    let env = spawn_app(Options::default()).await;
    let check = |config: &'static str| {
        let env = &env;
        async move {
            let (_, r) = call_wire(env, "validate_config", &json!({"config": config})).await;
            assert!(r["result"]["isError"] != true, "{r}");
            r["result"]["structuredContent"].clone()
        }
    };
    let ok = check("steps:\n  - name: build\n    run: cargo build\n    timeout: 10m\n").await;
    assert_eq!(ok["valid"], true, "{ok}");
    assert_eq!(ok["steps"][0]["name"], "build");
    assert_eq!(ok["steps"][0]["timeout_secs"], 600);
    let bad =
        check("steps:\n  - name: build\n    run: cargo build\n  - name: clone\n    run: x\n").await;
    assert_eq!(bad["valid"], false);
    assert!(
        bad["errors"][0]
            .as_str()
            .unwrap()
            .contains("steps[1].name: `clone` is reserved"),
        "{bad}"
    );
    let typo = check("steps:\n  - name: build\n    rn: cargo build\n").await;
    assert_eq!(typo["valid"], false);
    assert!(
        typo["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown field `rn`"),
        "{typo}"
    );
}

/// A read-only token (`RAIBID_MCP_READONLY_TOKEN`) lists and calls only the read-only tools; a
/// submit, cancel, retry or cleanup with it is a tool error saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_token_only_reads() {
    let env = spawn_app(Options {
        settings: |s| s.mcp_readonly_token = Some("read-only-token-42".into()),
        ..Options::default()
    })
    .await;
    let send = |token: &'static str, method: &'static str, params: Value| {
        let r = env
            .http
            .post(env.url("/mcp"))
            .bearer_auth(token)
            .header("accept", ACCEPT)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}));
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = send("read-only-token-42", "tools/list", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for w in ["submit_job", "cancel_job", "retry_job", "cleanup"] {
        assert!(
            !names.contains(&w),
            "{w} listed for a read-only token: {names:?}"
        );
    }
    for r in [
        "get_job",
        "get_logs",
        "get_diagnostics",
        "get_failure_summary",
        "list_jobs",
        "wait_for_job",
        "queue_status",
        "validate_config",
        "list_schedules",
    ] {
        assert!(
            names.contains(&r),
            "{r} missing for a read-only token: {names:?}"
        );
    }
    let (_, v) = send(
        "read-only-token-42",
        "tools/call",
        json!({"name": "submit_job", "arguments": {"repo_url": "file:///x", "ref": "main"}}),
    )
    .await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{v}"
    );
    assert_eq!(env.job_count().await, 0);
    let (_, v) = send(
        "read-only-token-42",
        "tools/call",
        json!({"name": "list_jobs", "arguments": {}}),
    )
    .await;
    assert!(v["result"]["isError"] != true, "{v}");
    let (s, _) = send("wrong-token", "tools/list", json!({})).await;
    assert_eq!(s, 401);
    let (_, v) = send(TOKEN, "tools/list", json!({})).await;
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 15);
}

/// A test that failed and passed on the same commit (and patch) is flaky; one that failed on a commit
/// that never passed, or passed only with another patch, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flaky_tests_failed_and_passed_on_the_same_code() {
    use raibid_core::cargo_messages::{Diagnostics, FailingTest};
    use raibid_core::job::{PatchRef, Status};
    let env = spawn_app(Options::default()).await;
    let (url, _) = make_repo(&env.tmp.path().join("flaky"), &[]);
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // (sha, patched, status, failing tests)
    let runs: [(&str, bool, Status, &[&str]); 5] = [
        (
            "1",
            false,
            Status::Failed,
            &["tests::timing", "tests::broken"],
        ),
        ("1", false, Status::Succeeded, &[]),
        ("2", false, Status::Failed, &["tests::broken"]),
        ("3", true, Status::Failed, &["tests::patched"]),
        ("3", false, Status::Succeeded, &[]),
    ];
    for (sha, patched, status, failing) in runs {
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        assert_eq!(s, 201);
        let id = v["id"].as_str().unwrap().to_string();
        env.queue
            .modify(&id, |j| {
                j.status = status;
                j.source.sha = Some(sha.repeat(40));
                j.source.patch = patched.then(|| PatchRef {
                    bytes: 10,
                    sha256: "f".repeat(64),
                });
                j.timestamps.finished = Some(chrono::Utc::now());
                Ok(Some("job_finished"))
            })
            .await
            .unwrap();
        let d = Diagnostics {
            tests: failing
                .iter()
                .map(|t| FailingTest {
                    name: t.to_string(),
                    panic_message: Some(format!("{t} went wrong")),
                    file: None,
                    line: None,
                    column: None,
                    output: String::new(),
                    output_truncated: false,
                    step: Some("test".into()),
                })
                .collect(),
            ..Diagnostics::default()
        };
        let _: () = redis::cmd("SET")
            .arg(raibid_core::contract::job_diagnostics_key(&id))
            .arg(serde_json::to_string(&d).unwrap())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let (_, r) = call_wire(&env, "find_flaky_tests", &json!({"repo": "flaky"})).await;
    let a = &r["result"]["structuredContent"];
    assert_eq!(a["scanned_jobs"], 5, "{a}");
    let names: Vec<&str> = a["flaky"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["test"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["tests::broken", "tests::timing"], "{a}");
    assert_eq!(a["flaky"][1]["sha"], "1".repeat(40));
    assert_eq!(a["flaky"][1]["passed_in"].as_array().unwrap().len(), 1);
    let (_, r) = call_wire(
        &env,
        "get_test_history",
        &json!({"repo": "flaky", "test": "tests::broken"}),
    )
    .await;
    let h = &r["result"]["structuredContent"];
    assert_eq!(h["failures"], 2, "{h}");
    assert_eq!(h["flaky"], true, "{h}");
    let (_, r) = call_wire(
        &env,
        "get_test_history",
        &json!({"repo": "flaky", "test": "tests::patched"}),
    )
    .await;
    let h = &r["result"]["structuredContent"];
    assert_eq!(h["failures"], 1, "{h}");
    assert_eq!(h["flaky"], false, "passed only without the patch: {h}");
}
