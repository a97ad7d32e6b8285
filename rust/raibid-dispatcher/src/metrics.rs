//! `GET /metrics`: OpenMetrics text from `prometheus-client`.
//!
//! A scrape is unauthenticated, so it must be cheap and change nothing: one read-only Lua script
//! (`flags=no-writes`) reads every queue figure in one round trip — stream length, the agent group's
//! lag/pending/last-delivered id and the oldest waiting entry, the per-status counts and the two
//! histograms the write scripts keep, and the live agents (members of `raibid:agents` whose heartbeat
//! key exists; bounded by the pool size). Nothing is pruned on a scrape (`GET /api/v1/agents` and the
//! agents' deregistration keep the set clean). The per-replica counters come from memory.

use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use raibid_core::contract::keys;
use raibid_core::job::Status;
use raibid_core::queue::{entry_millis, CLAIM_LATENCY_BUCKETS, JOB_DURATION_BUCKETS};
use redis::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// The read-only scrape script.
const SCRAPE_LUA: &str = r#"#!lua flags=no-writes
-- KEYS: stream, counts, claim_hist, duration_hist, agents_set   ARGV: group, agent_prefix
local len, lag, pending, oldest = 0, -1, 0, ''
if redis.call('EXISTS', KEYS[1]) == 1 then
  len = redis.call('XLEN', KEYS[1])
  local last = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local m = {}
    for i = 1, #g, 2 do m[g[i]] = g[i + 1] end
    if m['name'] == ARGV[1] then
      if m['lag'] then lag = m['lag'] end
      pending = m['pending']
      last = m['last-delivered-id']
    end
  end
  if last then
    local e = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
    if e[1] then oldest = e[1][1] end
  end
end
local live = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  live = live + redis.call('EXISTS', ARGV[2] .. name)
end
return {len, lag, pending, oldest, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
        redis.call('HGETALL', KEYS[4]), live}
"#;

fn script() -> &'static redis::Script {
    static S: OnceLock<redis::Script> = OnceLock::new();
    S.get_or_init(|| redis::Script::new(SCRAPE_LUA))
}

/// What one scrape read from Redis.
#[derive(Debug, Default, Clone)]
struct QueueFigures {
    length: u64,
    lag: Option<u64>,
    pending: u64,
    oldest_waiting_age_secs: f64,
    counts: HashMap<String, f64>,
    claim: HashMap<String, f64>,
    duration: HashMap<String, f64>,
    agents: u64,
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn flat_map(v: &Value) -> HashMap<String, f64> {
    match v {
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((text(k), text(v).parse().unwrap_or(0.0))),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| (text(k), text(v).parse().unwrap_or(0.0)))
            .collect(),
        _ => HashMap::new(),
    }
}

async fn read_figures(state: &AppState) -> redis::RedisResult<QueueFigures> {
    let mut con = state.queue.redis();
    let r: Vec<Value> = script()
        .key(keys::JOBS_STREAM)
        .key(keys::JOB_STATUS_COUNTS)
        .key(keys::CLAIM_LATENCY_HIST)
        .key(keys::JOB_DURATION_HIST)
        .key(keys::AGENTS_SET)
        .arg(keys::AGENTS_GROUP)
        .arg(keys::AGENT_PREFIX)
        .invoke_async(&mut con)
        .await?;
    let get = |i: usize| r.get(i).cloned().unwrap_or(Value::Nil);
    let lag = int(&get(1));
    let oldest = text(&get(3));
    Ok(QueueFigures {
        length: int(&get(0)).max(0) as u64,
        lag: (lag >= 0).then_some(lag as u64),
        pending: int(&get(2)).max(0) as u64,
        oldest_waiting_age_secs: entry_millis(&oldest)
            .map(|ms| (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0)
            .unwrap_or(0.0),
        counts: flat_map(&get(4)),
        claim: flat_map(&get(5)),
        duration: flat_map(&get(6)),
        agents: int(&get(7)).max(0) as u64,
    })
}

/// One scrape's values, encoded by `prometheus-client`.
#[derive(Debug)]
struct Snapshot {
    webhooks: Vec<(&'static str, u64)>,
    statuses: Vec<(&'static str, u64)>,
    queue: Option<QueueFigures>,
}

fn gauge<V: EncodeGaugeValue + std::fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: V,
) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn gauge_with<V: EncodeGaugeValue + std::fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    v: V,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    let l = m.encode_family(&labels)?;
    ConstGauge::new(v).encode(l)
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    h: &HashMap<String, f64>,
) -> std::fmt::Result {
    // Redis keeps cumulative counts per bound; the encoder wants per-bucket counts (and the last
    // bucket at f64::MAX is written as +Inf).
    let mut buckets = Vec::with_capacity(bounds.len() + 1);
    let mut below = 0u64;
    for b in bounds {
        let c = h.get(&b.to_string()).copied().unwrap_or(0.0) as u64;
        buckets.push((*b, c.saturating_sub(below)));
        below = below.max(c);
    }
    let inf = h.get("+Inf").copied().unwrap_or(0.0) as u64;
    buckets.push((f64::MAX, inf.saturating_sub(below)));
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(
        h.get("sum").copied().unwrap_or(0.0),
        h.get("count").copied().unwrap_or(0.0) as u64,
        &buckets,
        None,
    )
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(
            "raibid_webhooks",
            "Webhook deliveries by result (this replica).",
            None,
            MetricType::Counter,
        )?;
        for (result, v) in &self.webhooks {
            ConstCounter::new(*v).encode(m.encode_family(&[("result", *result)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "raibid_commit_statuses",
            "Commit statuses by result (this replica): posted, failed for good, retried.",
            None,
            MetricType::Counter,
        )?;
        for (result, v) in &self.statuses {
            ConstCounter::new(*v).encode(m.encode_family(&[("result", *result)])?)?;
        }
        let Some(q) = &self.queue else {
            return gauge(
                &mut enc,
                "raibid_redis_up",
                "Whether Redis answered this scrape.",
                0i64,
            );
        };
        let mut m = enc.encode_descriptor(
            "raibid_jobs",
            "Jobs by status: queued and running now, final statuses since the store began.",
            None,
            MetricType::Gauge,
        )?;
        for s in Status::ALL {
            let v = q.counts.get(s.as_str()).copied().unwrap_or(0.0).max(0.0) as i64;
            ConstGauge::new(v).encode(m.encode_family(&[("status", s.as_str())])?)?;
        }
        let labels = [("stream", keys::JOBS_STREAM), ("group", keys::AGENTS_GROUP)];
        gauge_with(
            &mut enc,
            "raibid_queue_length",
            "Entries in the job stream.",
            &labels,
            q.length as i64,
        )?;
        let lag_help = "Jobs not yet delivered to any agent (KEDA scales on this); NaN when Redis cannot count it.";
        match q.lag {
            Some(l) => gauge_with(&mut enc, "raibid_queue_lag", lag_help, &labels, l as i64)?,
            None => gauge_with(&mut enc, "raibid_queue_lag", lag_help, &labels, f64::NAN)?,
        }
        gauge_with(
            &mut enc,
            "raibid_queue_pending",
            "Jobs delivered and not yet acknowledged.",
            &labels,
            q.pending as i64,
        )?;
        gauge_with(
            &mut enc,
            "raibid_queue_oldest_waiting_age_seconds",
            "Age of the oldest unclaimed job.",
            &labels,
            q.oldest_waiting_age_secs,
        )?;
        gauge(
            &mut enc,
            "raibid_agents",
            "Agents with a live heartbeat.",
            q.agents as i64,
        )?;
        histogram(
            &mut enc,
            "raibid_claim_latency_seconds",
            "Time from enqueue to claim by an agent.",
            &CLAIM_LATENCY_BUCKETS,
            &q.claim,
        )?;
        histogram(
            &mut enc,
            "raibid_job_duration_seconds",
            "Time from job start to its final status.",
            &JOB_DURATION_BUCKETS,
            &q.duration,
        )?;
        gauge(
            &mut enc,
            "raibid_redis_up",
            "Whether Redis answered this scrape.",
            1i64,
        )
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let c = &state.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let queue = match read_figures(&state).await {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::debug!(error = %e, "metrics: redis unavailable");
            None
        }
    };
    let snap = Snapshot {
        webhooks: vec![
            ("enqueued", load(&c.webhooks_enqueued)),
            ("duplicate", load(&c.webhooks_duplicate)),
            ("rejected", load(&c.webhooks_rejected)),
            ("ignored", load(&c.webhooks_ignored)),
            ("mirror_sync", load(&c.mirror_syncs)),
        ],
        statuses: vec![
            ("posted", load(&c.statuses_posted)),
            ("failed", load(&c.statuses_failed)),
            ("retried", load(&c.statuses_retried)),
        ],
        queue,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snap));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed",
        )
            .into_response();
    }
    // The cache figures (one HGETALL of their counters), before OpenMetrics' closing `# EOF`.
    let mut cache = String::new();
    raibid_core::queue::cache_counters::render_metrics(&mut state.queue.redis(), &mut cache).await;
    if let Some(pos) = out.rfind("# EOF") {
        out.insert_str(pos, &cache);
    } else {
        out.push_str(&cache);
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
