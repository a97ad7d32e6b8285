//! The Buildah storage as a cache: one image job at a time per storage (a file lock, so agents sharing
//! the node's cache directory take turns), working containers removed after every job, job images kept
//! as layer cache within a size and age bound — counting the whole storage: layers, base images and
//! `RUN --mount=type=cache` data below Buildah's TMPDIR — and the removal of one job's images on request,
//! each request handled once per storage.

use super::buildah::Buildah;
use nix::fcntl::{Flock, FlockArg};
use raibid_core::image::local_reference;
use std::fs::File;
use std::path::Path;
use std::time::Duration;

/// The exclusive lock on a storage (released when dropped).
pub struct StorageLock {
    _lock: Flock<File>,
}

/// Take the storage lock: `Ok(Some)` at once, `Ok(None)` when another job holds it.
pub fn try_lock(b: &Buildah) -> std::io::Result<Option<StorageLock>> {
    let f = open_lock_file(b)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(StorageLock { _lock: l })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(std::io::Error::from(e)),
    }
}

/// Wait for the storage lock (blocking; run it on a blocking thread).
pub fn lock(b: &Buildah) -> std::io::Result<StorageLock> {
    let f = open_lock_file(b)?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map(|l| StorageLock { _lock: l })
        .map_err(|(_, e)| std::io::Error::from(e))
}

fn open_lock_file(b: &Buildah) -> std::io::Result<File> {
    b.prepare()?;
    let p = b
        .root
        .parent()
        .unwrap_or(b.root.as_path())
        .join("raibid.lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
}

/// Remove every working container of the storage (hold the lock: then none belongs to another job).
pub async fn remove_working_containers(b: &Buildah) -> Result<(), String> {
    b.query(&["rm".into(), "--all".into()]).await.map(|_| ())
}

/// Remove the local image of job `id` (untag; layers other images use stay).
pub async fn remove_job_image(b: &Buildah, id: &str) -> Result<bool, String> {
    match b.query(&["rmi".into(), local_reference(id)]).await {
        Ok(_) => Ok(true),
        Err(e) if e.contains("not known") || e.contains("not found") || e.contains("no such") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The file holding the request time (ms) of the last cleanup request this storage handled.
fn cleanup_mark(b: &Buildah) -> std::path::PathBuf {
    b.root
        .parent()
        .unwrap_or(b.root.as_path())
        .join("cleanup-handled")
}

/// Requests made within this margin before the last handled one are looked at again (clocks of
/// dispatcher replicas differ a little; removing an image twice is harmless).
const CLEANUP_MARGIN_MS: i64 = 60_000;

/// Remove the local images of jobs whose cleanup was requested since this storage last looked (hold
/// the lock). Returns the job ids handled; each request is handled once per storage, not at every job.
/// The mark file holds the newest request time handled and the ids handled within the margin before it.
pub async fn run_cleanups(
    b: &Buildah,
    queue: &raibid_core::queue::Queue,
) -> Result<Vec<String>, String> {
    let mark = cleanup_mark(b);
    let text = std::fs::read_to_string(&mark).unwrap_or_default();
    let mut lines = text.lines();
    let last: i64 = lines
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(i64::MIN + CLEANUP_MARGIN_MS);
    let mut recent: Vec<(String, i64)> = lines
        .filter_map(|l| {
            let (id, at) = l.split_once(' ')?;
            Some((id.to_string(), at.parse().ok()?))
        })
        .collect();
    let reqs = raibid_core::queue::image_cleanup::cleanups_since(queue, last - CLEANUP_MARGIN_MS)
        .await
        .map_err(|e| e.to_string())?;
    let mut handled = Vec::new();
    let mut newest = last;
    for (id, at) in reqs {
        if recent.iter().any(|(i, a)| *i == id && *a == at) {
            continue;
        }
        remove_job_image(b, &id).await?;
        newest = newest.max(at);
        recent.push((id.clone(), at));
        handled.push(id);
    }
    if !handled.is_empty() {
        let mut out = format!("{newest}\n");
        for (id, at) in recent
            .iter()
            .filter(|(_, a)| *a >= newest - CLEANUP_MARGIN_MS)
        {
            out.push_str(&format!("{id} {at}\n"));
        }
        std::fs::write(&mark, out).map_err(|e| format!("{}: {e}", mark.display()))?;
    }
    Ok(handled)
}

/// Bytes used below `dir` (apparent sizes, symlinks not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// What a GC run did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Local job images removed.
    pub removed: Vec<String>,
    /// Storage bytes before and after.
    pub bytes_before: u64,
    /// After.
    pub bytes_after: u64,
}

#[derive(serde::Deserialize)]
struct ImageRow {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    created: i64,
}

/// Bytes of the whole storage: `--root` (layers, job and base images) and Buildah's TMPDIR (where
/// `RUN --mount=type=cache` data lives).
pub fn storage_bytes(b: &Buildah) -> u64 {
    dir_bytes(&b.root) + dir_bytes(&b.tmpdir)
}

/// Remove job images older than `max_age`, then — while the storage (`storage_bytes`) is above
/// `max_bytes` — the oldest job images, then the cache-mount data, then the base images (oldest first),
/// and finally the layers no image uses any more. Call it with the lock held (no build runs then).
pub async fn gc(b: &Buildah, max_bytes: u64, max_age: Duration) -> Result<GcReport, String> {
    let mut rep = GcReport {
        bytes_before: storage_bytes(b),
        ..GcReport::default()
    };
    let out = b.query(&["images".into(), "--json".into()]).await?;
    let mut rows: Vec<ImageRow> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out).map_err(|e| format!("buildah images --json: {e}"))?
    };
    rows.sort_by_key(|r| r.created);
    let is_job = |r: &ImageRow| {
        r.names
            .as_ref()
            .is_some_and(|n| n.iter().any(|n| n.starts_with("localhost/raibid-job/")))
    };
    let (jobs, bases): (Vec<ImageRow>, Vec<ImageRow>) = rows.into_iter().partition(is_job);
    let now = chrono::Utc::now().timestamp();
    let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    let mut bytes = rep.bytes_before;
    for r in jobs {
        let old = now.saturating_sub(r.created) > max_age;
        if !old && bytes <= max_bytes {
            continue;
        }
        remove_row(b, &r, &mut rep).await;
        bytes = storage_bytes(b);
    }
    if bytes > max_bytes {
        // Cache-mount data (and anything else Buildah left in its TMPDIR): no build runs now.
        if let Ok(rd) = std::fs::read_dir(&b.tmpdir) {
            for e in rd.flatten() {
                let p = e.path();
                let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if removed.is_ok() {
                    rep.removed.push(p.display().to_string());
                }
            }
        }
        bytes = storage_bytes(b);
    }
    for r in bases {
        if bytes <= max_bytes {
            break;
        }
        remove_row(b, &r, &mut rep).await;
        bytes = storage_bytes(b);
    }
    if !rep.removed.is_empty() {
        // Intermediate layers only the removed images used.
        let _ = b.query(&["rmi".into(), "--prune".into()]).await;
    }
    rep.bytes_after = storage_bytes(b);
    Ok(rep)
}

async fn remove_row(b: &Buildah, r: &ImageRow, rep: &mut GcReport) {
    let names: Vec<String> = match (&r.names, &r.id) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(id)) => vec![id.clone()],
        _ => Vec::new(),
    };
    for n in names {
        if b.query(&["rmi".into(), "--force".into(), n.clone()])
            .await
            .is_ok()
        {
            rep.removed.push(n);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A Buildah stand-in: logs every call (its arguments after the global options) and answers
    /// `images --json` from a file.
    fn fake(dir: &Path, images: &str) -> (Buildah, std::path::PathBuf) {
        let log = dir.join("calls.log");
        let json = dir.join("images.json");
        std::fs::write(&json, images).unwrap();
        let bin = dir.join("buildah");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\nshift 6\necho \"$*\" >> '{}'\ncase \"$*\" in \"images --json\") cat '{}';; esac\n",
                log.display(),
                json.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = super::super::ImageConfig {
            buildah: bin,
            ..super::super::ImageConfig::default()
        };
        let b = Buildah::under(&dir.join("cache"), &cfg);
        b.prepare().unwrap();
        (b, log)
    }

    fn calls(log: &Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[tokio::test]
    async fn the_gc_counts_cache_mount_data_and_base_images() {
        let d = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now().timestamp();
        let images = format!(
            r#"[{{"id": "b1", "names": ["docker.io/library/alpine:3"], "created": {}}},
                {{"id": "j1", "names": ["localhost/raibid-job/01abc:latest"], "created": {now}}}]"#,
            now - 100
        );
        let (b, log) = fake(d.path(), &images);
        // 200 KB of `RUN --mount=type=cache` data, nothing in --root: over a 10 KB cap.
        let cache = b.tmpdir.join("buildah-cache-1000/registry");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("blob"), vec![0u8; 200_000]).unwrap();
        let r = gc(&b, 10_000, Duration::from_secs(86_400)).await.unwrap();
        assert!(r.bytes_before >= 200_000, "{r:?}");
        assert!(!cache.exists(), "cache-mount data stayed: {r:?}");
        assert!(r.bytes_after < 10_000, "{r:?}");
        assert!(calls(&log).iter().any(|c| c.contains("raibid-job/01abc")));
        // Layers in --root that removing images does not free (the stand-in frees nothing): the base
        // images go too, oldest first, after the job images and the cache data.
        std::fs::write(b.root.join("layer"), vec![0u8; 200_000]).unwrap();
        std::fs::remove_file(&log).unwrap();
        let r = gc(&b, 10_000, Duration::from_secs(86_400)).await.unwrap();
        let c = calls(&log);
        assert!(
            c.iter()
                .any(|c| c == "rmi --force docker.io/library/alpine:3"),
            "{c:?} {r:?}"
        );
        // Within the cap: nothing is removed.
        std::fs::remove_file(b.root.join("layer")).unwrap();
        std::fs::remove_file(&log).unwrap();
        let r = gc(&b, 10_000, Duration::from_secs(86_400)).await.unwrap();
        assert!(r.removed.is_empty(), "{r:?}");
    }

    #[tokio::test]
    async fn a_cleanup_request_is_handled_once_per_storage() {
        let redis = raibid_core::testkit::RedisServer::start().unwrap();
        let q = raibid_core::queue::Queue::connect(
            &redis.url(),
            raibid_core::queue::QueueConfig::default(),
        )
        .await
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let (b, log) = fake(d.path(), "[]");
        let keep = Duration::from_secs(3600);
        raibid_core::queue::image_cleanup::request_cleanup(&q, "01AAA", keep)
            .await
            .unwrap();
        raibid_core::queue::image_cleanup::request_cleanup(&q, "01BBB", keep)
            .await
            .unwrap();
        let first = run_cleanups(&b, &q).await.unwrap();
        assert_eq!(first.len(), 2, "{first:?}");
        let rmis = |log: &Path| calls(log).iter().filter(|c| c.starts_with("rmi ")).count();
        assert_eq!(rmis(&log), 2);
        // The next jobs do not run them again (old: every request of 30 days at every job)...
        run_cleanups(&b, &q).await.unwrap();
        run_cleanups(&b, &q).await.unwrap();
        assert_eq!(rmis(&log), 2, "{:?}", calls(&log));
        // ...but a new request is handled.
        raibid_core::queue::image_cleanup::request_cleanup(&q, "01CCC", keep)
            .await
            .unwrap();
        assert_eq!(
            run_cleanups(&b, &q).await.unwrap(),
            vec!["01CCC".to_string()]
        );
        assert_eq!(rmis(&log), 3);
    }
}
