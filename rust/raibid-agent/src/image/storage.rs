//! The Buildah storage as a cache: one image job at a time per storage (a file lock, so agents sharing
//! the node's cache directory take turns), working containers removed after every job, job images kept
//! as layer cache within a size and age bound, and the removal of one job's images on request.

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
    names: Option<Vec<String>>,
    #[serde(default)]
    created: i64,
}

/// Remove job images older than `max_age`, then the oldest ones until the storage is within
/// `max_bytes`, and finally the layers no image uses any more. Call it with the lock held.
pub async fn gc(b: &Buildah, max_bytes: u64, max_age: Duration) -> Result<GcReport, String> {
    let mut rep = GcReport {
        bytes_before: dir_bytes(&b.root),
        ..GcReport::default()
    };
    let out = b.query(&["images".into(), "--json".into()]).await?;
    let mut rows: Vec<ImageRow> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out).map_err(|e| format!("buildah images --json: {e}"))?
    };
    rows.retain(|r| {
        r.names
            .as_ref()
            .is_some_and(|n| n.iter().any(|n| n.starts_with("localhost/raibid-job/")))
    });
    rows.sort_by_key(|r| r.created);
    let now = chrono::Utc::now().timestamp();
    let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    let mut bytes = rep.bytes_before;
    for r in rows {
        let old = now.saturating_sub(r.created) > max_age;
        if !old && bytes <= max_bytes {
            continue;
        }
        for n in r.names.iter().flatten() {
            if b.query(&["rmi".into(), "--force".into(), n.clone()])
                .await
                .is_ok()
            {
                rep.removed.push(n.clone());
            }
        }
        bytes = dir_bytes(&b.root);
    }
    if !rep.removed.is_empty() {
        // Intermediate layers only the removed images used.
        let _ = b.query(&["rmi".into(), "--prune".into()]).await;
    }
    rep.bytes_after = dir_bytes(&b.root);
    Ok(rep)
}
