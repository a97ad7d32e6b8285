//! `notify_url`: when a job submitted with one is final, POST its final record there, signed the
//! Standard Webhooks way (`webhook-id` = the job id, `webhook-timestamp` = Unix seconds of the attempt,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with `RAIBID_NOTIFY_SECRET`; a
//! `whsec_<base64>` secret is used base64-decoded, as Standard Webhooks libraries do) and, as before,
//! `X-Raibid-Signature: sha256=<hex HMAC-SHA256 of the body>`; with retries and backoff. Driven by
//! `raibid:events` through its own consumer group (`raibid-notifiers`), so every replica shares the work.
//!
//! At least once across restarts: a notification counts as done (`raibid:job:{id}:notified`) only after
//! the receiver answered 2xx (or the attempts ran out); until then its event stays pending in the group,
//! and the replica delivering it keeps claiming it (`XCLAIM`) so no other replica takes it while it is
//! alive. A replica that stops ends its deliveries; another one takes the pending event over
//! (`XAUTOCLAIM` after twice the lease without a claim) and delivers it. Receivers de-duplicate on
//! `webhook-id` and reject old `webhook-timestamp`s (replays).
//!
//! No SSRF into the cluster by default: a URL naming a loopback, private, link-local or otherwise
//! non-public address — IPv4, IPv6, and IPv6 forms embedding an IPv4 address (IPv4-mapped and
//! -compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`), site-local `fec0::/10`, Teredo — is refused
//! (checked at submit time for literal addresses and cluster-looking names, and again after DNS
//! resolution right before sending, with the connection pinned to the checked address) unless its host
//! and port are listed in `RAIBID_NOTIFY_ALLOWED_HOSTS` (`host:port`; a bare host allows only the
//! scheme's default port). Redirects are not followed.

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
            let embedded = |hi: u16, lo: u16| {
                non_public(IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                )))
            };
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || s[..6].iter().all(|x| *x == 0) // IPv4-compatible ::a.b.c.d (deprecated)
                || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001) // local-use NAT64 64:ff9b:1::/48
                || (s[0] == 0x0064 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0) && embedded(s[6], s[7])) // NAT64
                || (s[0] == 0x2002 && embedded(s[1], s[2])) // 6to4
                || (s[0] == 0x2001 && s[1] == 0x0000) // Teredo (the client's IPv4 is obfuscated)
                || (s[0] == 0x0100 && s[1..4].iter().all(|x| *x == 0)) // discard-only 100::/64
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        }
    }
}

/// An entry of `RAIBID_NOTIFY_ALLOWED_HOSTS`: (host, port); `None` for a bare host.
fn allowed_entry(entry: &str) -> (String, Option<u16>) {
    let e = entry.trim().to_ascii_lowercase();
    if let Some(rest) = e.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        return match rest.split_once(']') {
            Some((h, p)) => (
                h.to_string(),
                p.strip_prefix(':').and_then(|p| p.parse().ok()),
            ),
            None => (rest.to_string(), None),
        };
    }
    match e.rsplit_once(':') {
        Some((h, p))
            if !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (h.to_string(), p.parse().ok())
        }
        _ => (e, None),
    }
}

/// Is the URL's host *and port* allowed? A bare host entry allows only the scheme's default port
/// (80 for http, 443 for https): `127.0.0.1` must not open every port of the host (Redis, …).
fn host_allowed(u: &url::Url, allowed: &[String]) -> bool {
    let Some(host) = u.host_str() else {
        return false;
    };
    let h = host.trim_matches(['[', ']']).to_ascii_lowercase();
    let port = u.port_or_known_default();
    allowed.iter().any(|a| {
        let (ah, ap) = allowed_entry(a);
        ah == h
            && match ap {
                Some(p) => port == Some(p),
                None => u.port().is_none(),
            }
    })
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
    if host_allowed(&u, allowed) {
        return Ok(u);
    }
    let bare = host.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if non_public(ip) {
            return Err(format!(
                "{ip} is not a public address (allow the host and port with {}=host:port to notify inside the network)",
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
            "`{host}` looks like an internal name (allow it with {}=host:port)",
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

/// The key of a secret: a Standard Webhooks `whsec_<base64>` secret base64-decoded, any other as is.
fn key_of(secret: &[u8]) -> Vec<u8> {
    secret
        .strip_prefix(b"whsec_")
        .and_then(base64_decode)
        .unwrap_or_else(|| secret.to_vec())
}

/// `webhook-signature` of a delivery (Standard Webhooks): `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn standard_signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key_of(secret)) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64_encode(&mac.finalize().into_bytes()))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (padding optional); `None` when it is not.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let t: Vec<u8> = text.iter().copied().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in t {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
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
    if !host_allowed(u, allowed) {
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
        let timestamp = chrono::Utc::now().timestamp();
        let standard = standard_signature(secret.as_bytes(), job.id.as_str(), timestamp, &body);
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
                .header("webhook-id", job.id.as_str())
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", &standard)
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

/// Value of `raibid:job:{id}:notified` once the receiver took the notification (2xx).
const DELIVERED: &str = "delivered";
/// Value once every attempt failed (logged; not tried again).
const GAVE_UP: &str = "gave_up";

static NOTIFIERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The notifier loop: one per replica. Its deliveries run in a `JoinSet` it owns: when the loop ends
/// (the dispatcher stops) they end too, and their events stay pending for another replica.
pub async fn notifier(state: AppState) {
    let Some(secret) = state.settings.notify_secret.clone() else {
        tracing::info!("no notification secret configured; notify_url is refused at submit");
        return;
    };
    let me = format!(
        "raibid-notifier-{}-{}-{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id(),
        NOTIFIERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    // A pending delivery nobody has claimed for this long is taken over (its replica is gone).
    let takeover = (state.settings.lease * 2).max(Duration::from_secs(1));
    let block = Duration::from_millis(2000);
    let mut con = None;
    let mut tasks = tokio::task::JoinSet::new();
    // Job id → the event entry its delivery by this replica runs under.
    let inflight: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        Default::default();
    loop {
        while tasks.try_join_next().is_some() {}
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
        // Deliveries of a replica that is gone (not claimed for `takeover`) come first.
        let claimed: redis::RedisResult<Value> = redis::cmd("XAUTOCLAIM")
            .arg(keys::EVENTS_STREAM)
            .arg(keys::NOTIFY_GROUP)
            .arg(&me)
            .arg(takeover.as_millis() as u64)
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
            // notify twice. Done (delivered or given up) is recorded only after the delivery ended.
            let mut rc = state.queue.redis();
            let done: redis::RedisResult<Option<String>> = redis::cmd("GET")
                .arg(contract::job_notified_key(&job.id))
                .query_async(&mut rc)
                .await;
            match done {
                Ok(Some(_)) => {
                    ack(&state, &id).await;
                    continue;
                }
                Ok(None) => {}
                // Unknown: leave the event pending; it is taken over later.
                Err(_) => continue,
            }
            let running_under = inflight.lock().ok().and_then(|mut f| {
                let cur = f.get(job.id.as_str()).cloned();
                if cur.is_none() {
                    f.insert(job.id.to_string(), id.clone());
                }
                cur
            });
            match running_under {
                // Its own event, claimed again: the delivery holds it.
                Some(entry) if entry == id => continue,
                // This replica delivers it under another event, which stays pending until done.
                Some(_) => {
                    ack(&state, &id).await;
                    continue;
                }
                None => {}
            }
            let state = state.clone();
            let secret = secret.clone();
            let me = me.clone();
            let inflight = inflight.clone();
            tasks.spawn(async move {
                let allowed = state.settings.notify_allowed_hosts.clone();
                // Keep the event claimed by this replica while the delivery runs (retries and backoff
                // can outlast the takeover time).
                let delivery = deliver(&job, &url, &secret, &allowed);
                tokio::pin!(delivery);
                let mut keep =
                    tokio::time::interval((takeover / 3).max(Duration::from_millis(100)));
                let outcome = loop {
                    tokio::select! {
                        r = &mut delivery => break r,
                        _ = keep.tick() => {
                            let mut c = state.queue.redis();
                            let _: redis::RedisResult<Value> = redis::cmd("XCLAIM")
                                .arg(keys::EVENTS_STREAM)
                                .arg(keys::NOTIFY_GROUP)
                                .arg(&me)
                                .arg(0)
                                .arg(&id)
                                .arg("JUSTID")
                                .query_async(&mut c)
                                .await;
                        }
                    }
                };
                let mark = match &outcome {
                    Ok(n) => {
                        tracing::info!(job = %job.id, attempts = n, "notify_url delivered");
                        DELIVERED
                    }
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "notify_url gave up");
                        GAVE_UP
                    }
                };
                let mut c = state.queue.redis();
                let marked: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(contract::job_notified_key(&job.id))
                    .arg(mark)
                    .arg("EX")
                    .arg(state.queue.config().retention.as_secs().max(1))
                    .query_async(&mut c)
                    .await;
                // Unrecorded: leave the event pending (delivered again later: at least once).
                if marked.is_ok() {
                    ack(&state, &id).await;
                }
                if let Ok(mut f) = inflight.lock() {
                    f.remove(job.id.as_str());
                }
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
        assert!(check_url("http://127.0.0.1:9/x", &["127.0.0.1:9".to_string()]).is_ok());
    }

    #[test]
    fn ipv6_forms_of_internal_addresses_are_refused() {
        let none: Vec<String> = Vec::new();
        for bad in [
            "http://[64:ff9b::7f00:1]/x",     // NAT64 of 127.0.0.1
            "http://[64:ff9b::a00:5]/x",      // NAT64 of 10.0.0.5
            "http://[64:ff9b:1::a00:5]/x",    // local-use NAT64
            "http://[2002:7f00:1::1]/x",      // 6to4 of 127.0.0.1
            "http://[2002:a9fe:a9fe::]/x",    // 6to4 of 169.254.169.254
            "http://[::127.0.0.1]/x",         // IPv4-compatible
            "http://[::10.1.2.3]/x",          // IPv4-compatible
            "http://[fec0::1]/x",             // site local
            "http://[2001:0:4136:e378::1]/x", // Teredo
        ] {
            assert!(check_url(bad, &none).is_err(), "{bad} should be refused");
        }
        // Public IPv4 behind NAT64 / 6to4 is public.
        assert!(check_url("http://[64:ff9b::808:808]/x", &none).is_ok());
        assert!(check_url("http://[2002:808:808::1]/x", &none).is_ok());
        assert!(check_url("http://[2606:4700::1111]/x", &none).is_ok());
    }

    #[test]
    fn an_allowed_host_allows_only_its_port() {
        let bare = vec!["127.0.0.1".to_string()];
        assert!(check_url("http://127.0.0.1:6379/", &bare).is_err());
        assert!(check_url("http://127.0.0.1/", &bare).is_ok());
        let with_port = vec!["127.0.0.1:8080".to_string(), "[::1]:9000".to_string()];
        assert!(check_url("http://127.0.0.1:8080/hook", &with_port).is_ok());
        assert!(check_url("http://127.0.0.1:6379/", &with_port).is_err());
        assert!(check_url("http://127.0.0.1/", &with_port).is_err());
        assert!(check_url("http://[::1]:9000/", &with_port).is_ok());
        assert!(check_url("http://[::1]:9001/", &with_port).is_err());
    }

    #[test]
    fn standard_webhooks_signature_matches_the_spec_vector() {
        // The Standard Webhooks specification's example.
        assert_eq!(
            standard_signature(
                b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_decode(b"Zm9vYg==").unwrap(), b"foob");
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
