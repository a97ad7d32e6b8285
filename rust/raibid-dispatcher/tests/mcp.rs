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
    assert_eq!(list.len(), 10);
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
