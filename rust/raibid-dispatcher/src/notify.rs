//! `notify_url`: when a job submitted with one is final, POST its final record there, signed like a forge
//! webhook (`X-Raibid-Signature: sha256=<hex HMAC-SHA256 of the body>` with `RAIBID_NOTIFY_SECRET`), with
//! retries and backoff. Driven by `raibid:events` through its own consumer group (`raibid-notifiers`),
//! so every replica shares the work and a crashed replica's deliveries are claimed by another.
//!
//! No SSRF into the cluster by default: a URL naming a loopback, private, link-local or otherwise
//! non-public address (checked at submit time for literal addresses and cluster-looking names, and again
//! after DNS resolution right before sending, with the connection pinned to the checked address) is
//! refused unless its host is listed in `RAIBID_NOTIFY_ALLOWED_HOSTS`. Redirects are not followed.

use crate::AppState;
use hmac::{Hmac, Mac};
use raibid_core::contract::{self, http, keys};
use raibid_core::event::Event;
use raibid_core::job::Job;
use redis::Value;
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Delivery attempts per notification.
pub const ATTEMPTS: u32 = 6;
/// Timeout of one delivery attempt.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// True for addresses a notification must not reach by default.
pub fn non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 (CGNAT, k3s defaults nearby)
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return non_public(IpAddr::V4(m));
            }
            let s = v.segments();
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        }
    }
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let h = host.trim_matches(['[', ']']).to_ascii_lowercase();
    allowed.iter().any(|a| a.eq_ignore_ascii_case(&h))
}

/// Check a notification URL at submit time (scheme, host, literal addresses, cluster names).
pub fn check_url(raw: &str, allowed: &[String]) -> Result<url::Url, String> {
    let u = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("scheme `{}` is not http or https", u.scheme()));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials in the URL are not accepted".into());
    }
    let host = u.host_str().ok_or("no host")?.to_ascii_lowercase();
    if host_allowed(&host, allowed) {
        return Ok(u);
    }
    let bare = host.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if non_public(ip) {
            return Err(format!(
                "{ip} is not a public address (allow the host with {} to notify inside the network)",
                contract::env::NOTIFY_ALLOWED_HOSTS
            ));
        }
        return Ok(u);
    }
    let internal = [
        ".localhost",
        ".local",
        ".svc",
        ".cluster.local",
        ".internal",
        ".lan",
    ];
    if host == "localhost" || internal.iter().any(|s| host.ends_with(s)) || !host.contains('.') {
        return Err(format!(
            "`{host}` looks like an internal name (allow it with {})",
            contract::env::NOTIFY_ALLOWED_HOSTS
        ));
    }
    Ok(u)
}

/// Hex HMAC-SHA256 of `body`, as sent in `X-Raibid-Signature` (`sha256=<hex>`).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Resolve the URL's host and check every address (unless the host is allowed); the address to pin.
async fn resolve(u: &url::Url, allowed: &[String]) -> Result<SocketAddr, String> {
    let host = u.host_str().ok_or("no host")?;
    let port = u.port_or_known_default().ok_or("no port")?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    if !host_allowed(host, allowed) {
        if let Some(bad) = addrs.iter().find(|a| non_public(a.ip())) {
            return Err(format!(
                "{host} resolves to {}, not a public address",
                bad.ip()
            ));
        }
    }
    Ok(first)
}

/// Deliver one final record, retrying with backoff. Returns the attempt that succeeded.
pub async fn deliver(
    job: &Job,
    url: &str,
    secret: &str,
    allowed: &[String],
) -> Result<u32, String> {
    let u = check_url(url, allowed)?;
    let body = serde_json::to_vec(&job.public()).map_err(|e| e.to_string())?;
    let sig = sign(secret.as_bytes(), &body);
    let mut delay = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let r = async {
            let addr = resolve(&u, allowed).await?;
            let host = u.host_str().unwrap_or_default().to_string();
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(TIMEOUT)
                .resolve(&host, addr)
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .post(u.clone())
                .header("content-type", "application/json")
                .header(http::NOTIFY_SIGNATURE_HEADER, &sig)
                .header("X-Raibid-Event", "job_finished")
                .header("X-Raibid-Delivery", format!("{}-{attempt}", job.id))
                .body(body.clone())
                .send()
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", resp.status()))
            }
        }
        .await;
        match r {
            Ok(()) => return Ok(attempt),
            Err(e) => {
                tracing::warn!(job = %job.id, attempt, error = %e, "notify_url delivery failed");
                last = e;
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 3).min(Duration::from_secs(30));
        }
    }
    Err(last)
}

fn entries(reply: &Value) -> Vec<(String, Option<String>)> {
    // [[stream, [[id, [k, v, ...]], ...]]] (RESP2) or {stream: [...]} (RESP3); XAUTOCLAIM: [next, [[id, [...]]], ...].
    fn items(v: &Value) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        if let Value::Array(es) = v {
            for e in es {
                if let Value::Array(pair) = e {
                    let id = match pair.first() {
                        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                        _ => continue,
                    };
                    let mut ev = None;
                    if let Some(Value::Array(kv)) = pair.get(1) {
                        for c in kv.chunks(2) {
                            if let [Value::BulkString(k), Value::BulkString(v)] = c {
                                if k.as_slice() == b"event" {
                                    ev = Some(String::from_utf8_lossy(v).into_owned());
                                }
                            }
                        }
                    }
                    out.push((id, ev));
                }
            }
        }
        out
    }
    match reply {
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                if let Value::Array(kv) = s {
                    if let Some(es) = kv.get(1) {
                        out.extend(items(es));
                    }
                }
            }
            out
        }
        Value::Map(m) => m.iter().flat_map(|(_, v)| items(v)).collect(),
        _ => Vec::new(),
    }
}

/// The notifier loop: one per replica.
pub async fn notifier(state: AppState) {
    let Some(secret) = state.settings.notify_secret.clone() else {
        tracing::info!("no notification secret configured; notify_url is refused at submit");
        return;
    };
    let me = format!(
        "raibid-notifier-{}-{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    );
    let block = Duration::from_millis(2000);
    let mut con = None;
    loop {
        if con.is_none() {
            match state.queue.blocking_connection(block).await {
                Ok(mut c) => {
                    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(keys::EVENTS_STREAM)
                        .arg(keys::NOTIFY_GROUP)
                        .arg("$")
                        .arg("MKSTREAM")
                        .query_async(&mut c)
                        .await;
                    if let Err(e) = r {
                        if e.code() != Some("BUSYGROUP") {
                            tracing::warn!(error = %e, "notifier: cannot create its group");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                    con = Some(c);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(c) = con.as_mut() else { continue };
        // Deliveries a crashed replica left pending for over a minute come first.
        let claimed: redis::RedisResult<Value> = redis::cmd("XAUTOCLAIM")
            .arg(keys::EVENTS_STREAM)
            .arg(keys::NOTIFY_GROUP)
            .arg(&me)
            .arg(60_000)
            .arg("0-0")
            .arg("COUNT")
            .arg(50)
            .query_async(c)
            .await;
        let mut batch = match claimed {
            Ok(Value::Array(parts)) => parts
                .get(1)
                .map(|v| {
                    entries(&Value::Array(vec![Value::Array(vec![
                        Value::Nil,
                        v.clone(),
                    ])]))
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let read: redis::RedisResult<Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(keys::NOTIFY_GROUP)
            .arg(&me)
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys::EVENTS_STREAM)
            .arg(">")
            .query_async(c)
            .await;
        match read {
            Ok(v) => batch.extend(entries(&v)),
            Err(e) => {
                tracing::warn!(error = %e, "notifier: redis unavailable; retrying");
                con = None;
                continue;
            }
        }
        for (id, ev) in batch {
            let ev = ev.and_then(|e| serde_json::from_str::<Event>(&e).ok());
            let job = match ev {
                Some(ev)
                    if ev.kind == "job_finished"
                        || (ev.status.is_final() && ev.kind != "job_created") =>
                {
                    state.queue.get(&ev.job).await.ok()
                }
                _ => None,
            };
            let target = job
                .as_ref()
                .filter(|j| j.status.is_final())
                .and_then(|j| j.source.notify_url.clone());
            let (Some(job), Some(url)) = (job, target) else {
                ack(&state, &id).await;
                continue;
            };
            // Once per job: several final-looking events (cancel of a queued job, reaper) must not
            // notify twice.
            let mut rc = state.queue.redis();
            let first: redis::RedisResult<bool> = redis::cmd("SET")
                .arg(contract::job_notified_key(&job.id))
                .arg("1")
                .arg("NX")
                .arg("EX")
                .arg(state.queue.config().retention.as_secs().max(1))
                .query_async(&mut rc)
                .await;
            if !matches!(first, Ok(true)) {
                ack(&state, &id).await;
                continue;
            }
            let state = state.clone();
            let secret = secret.clone();
            tokio::spawn(async move {
                let allowed = state.settings.notify_allowed_hosts.clone();
                match deliver(&job, &url, &secret, &allowed).await {
                    Ok(n) => tracing::info!(job = %job.id, attempts = n, "notify_url delivered"),
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "notify_url gave up"),
                }
                ack(&state, &id).await;
            });
        }
    }
}

async fn ack(state: &AppState, id: &str) {
    let mut c = state.queue.redis();
    let _: redis::RedisResult<i64> = redis::cmd("XACK")
        .arg(keys::EVENTS_STREAM)
        .arg(keys::NOTIFY_GROUP)
        .arg(id)
        .query_async(&mut c)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_targets_unless_allowed() {
        let none: Vec<String> = Vec::new();
        for bad in [
            "http://127.0.0.1:9/x",
            "http://10.0.0.5/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest",
            "http://redis.raibid-system.svc/x",
            "http://localhost/x",
            "http://gitea/x",
            "ftp://example.com/x",
            "http://user:pw@example.com/x",
            "http://[::ffff:10.1.2.3]/x",
        ] {
            assert!(check_url(bad, &none).is_err(), "{bad} should be refused");
        }
        assert!(check_url("https://ci.example.com/hook", &none).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", &["127.0.0.1".to_string()]).is_ok());
    }

    #[test]
    fn signature_is_hex_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
