//! Cargo target slots: `<cache>/targets/<repo-id>/slot-<n>/{src,target/<key>,meta.json}`, each locked
//! by `slot-<n>.lock` beside it while a job uses it.
//!
//! - A job takes a free slot of its repository (one its branch used last, else one of the default
//!   branch, else the freshest), or a new one. The checkout lives at the slot's `src` for good, so the
//!   absolute paths in cargo's fingerprints match from job to job, and it is updated in place
//!   (`git checkout -f`, then the untracked files removed as `git clean -ffdx` would), so unchanged
//!   files keep their mtimes.
//! - Inside the slot, each cache key has its own target directory (`CARGO_TARGET_DIR`); a key the
//!   slot has never built is seeded from another free slot that has it (`cp -a --reflink=auto`, then an
//!   atomic rename), else starts cold. Cargo judges workspace crates by mtimes (dep-info paths are
//!   package-relative, artifact names path-independent), so after seeding every checked-out file is
//!   touched: the seeded workspace crates rebuild, never pass for fresh; dependencies stay fresh.
//! - `meta.json` names the job using the slot; if the next holder finds a job there, that job was
//!   killed: the checkout is reset anyway, and the target directory is kept, because cargo writes a
//!   unit's fingerprint only after the unit's outputs, so an interrupted unit is rebuilt, never
//!   trusted.
//! - Eviction: past the size cap (target directories, checkouts and git mirrors together), the least
//!   recently used target directories of slots nobody holds are deleted, then slots left without any,
//!   then mirrors nobody updates or borrows from; never one in use.

use super::lock::{self, FileLock};
use super::mirror::run;
use super::{du, CloneError, Sink};
use crate::git::{Credentials, Limits};
use raibid_core::cache_stats::CacheStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a slot remembers.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Repository URL (redacted).
    #[serde(default)]
    pub(crate) repo: String,
    /// Branch of the last job.
    #[serde(default)]
    pub(crate) branch: String,
    /// Last use, Unix milliseconds.
    #[serde(default)]
    pub(crate) last_used_ms: i64,
    /// The job using it now (or a killed job's id).
    #[serde(default)]
    pub(crate) job: Option<String>,
    /// Target directories by cache key.
    #[serde(default)]
    pub(crate) keys: BTreeMap<String, KeyMeta>,
    /// Bytes of the checkout.
    #[serde(default)]
    pub(crate) src_bytes: u64,
}

/// One target directory.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct KeyMeta {
    /// Last use, Unix milliseconds.
    pub(crate) last_used_ms: i64,
    /// Bytes on disk after its last job.
    pub(crate) bytes: u64,
}

/// A slot held by this job (the lock is released on drop).
pub(crate) struct Slot {
    pub(crate) repo_dir: PathBuf,
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) recovered: bool,
    pub(crate) meta: Meta,
    _lock: FileLock,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn read_meta(dir: &Path) -> Meta {
    std::fs::read(dir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_meta(dir: &Path, m: &Meta) {
    // The slot directory itself is never shown to a step (only its `src/` and `target/<key>/`), but
    // the file is created as if it were: `O_EXCL | O_NOFOLLOW` after unlinking a leftover.
    let tmp = dir.join(format!(".meta.json.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if let Ok(b) = serde_json::to_vec_pretty(m) {
        if super::gitdir::write_new(&tmp, &b).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join("meta.json"));
        }
    }
}

/// `feature` for `refs/heads/feature`.
pub(crate) fn branch_of(git_ref: &str) -> String {
    git_ref
        .strip_prefix("refs/heads/")
        .unwrap_or(git_ref)
        .to_string()
}

fn slot_names(repo_dir: &Path) -> Vec<(u32, String)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(repo_dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(i) = n.strip_prefix("slot-").and_then(|x| x.parse::<u32>().ok()) {
                if e.path().is_dir() {
                    v.push((i, n));
                }
            }
        }
    }
    v
}

/// Slots of the repository, most preferred first: the branch's own, the default branches', the rest;
/// most recently used first within each.
fn preference(repo_dir: &Path, branch: &str, defaults: &[String]) -> Vec<(String, Meta)> {
    let mut v: Vec<(String, Meta)> = slot_names(repo_dir)
        .into_iter()
        .map(|(_, n)| {
            let m = read_meta(&repo_dir.join(&n));
            (n, m)
        })
        .collect();
    let rank = |m: &Meta| {
        if m.branch == branch {
            0
        } else if defaults.contains(&m.branch) {
            1
        } else {
            2
        }
    };
    v.sort_by(|a, b| {
        rank(&a.1)
            .cmp(&rank(&b.1))
            .then(b.1.last_used_ms.cmp(&a.1.last_used_ms))
    });
    v
}

/// Take a slot for a job of `branch`. Returns the slot and the milliseconds spent on locks.
pub(crate) async fn acquire(
    root: &Path,
    repo_id: &str,
    repo_shown: &str,
    branch: &str,
    defaults: &[String],
    job_id: &str,
    limits: &Limits,
) -> Result<(Slot, u64), CloneError> {
    let repo_dir = root.join("targets").join(repo_id);
    super::mkdirs(&repo_dir, limits.user.as_ref())
        .map_err(|e| CloneError::Failed(format!("cache dir: {e}")))?;
    let t = Instant::now();
    let stop = limits.stop.clone();
    // Choosing (and creating) a slot is brief and serialised per repository.
    let _select = lock::lock(&repo_dir.join(".select.lock"), limits.deadline, || {
        *stop.borrow() != crate::stop::Stop::None
    })
    .await
    .map_err(CloneError::from)?;
    let mut chosen = None;
    for (name, meta) in preference(&repo_dir, branch, defaults) {
        if let Ok(Some(l)) = lock::try_lock(&repo_dir.join(format!("{name}.lock"))) {
            chosen = Some((name, meta, l));
            break;
        }
    }
    let (name, meta, l) = match chosen {
        Some(c) => c,
        None => {
            let n = slot_names(&repo_dir)
                .iter()
                .map(|(i, _)| i + 1)
                .max()
                .unwrap_or(0);
            let name = format!("slot-{n}");
            let l = lock::try_lock(&repo_dir.join(format!("{name}.lock")))
                .map_err(|e| CloneError::Failed(format!("slot lock: {e}")))?
                .ok_or_else(|| CloneError::Failed("new slot is locked".into()))?;
            super::mkdirs(&repo_dir.join(&name), limits.user.as_ref())
                .map_err(|e| CloneError::Failed(format!("slot dir: {e}")))?;
            (name, Meta::default(), l)
        }
    };
    let lock_ms = t.elapsed().as_millis() as u64;
    let dir = repo_dir.join(&name);
    let recovered = meta.job.is_some();
    let mut meta = meta;
    meta.repo = repo_shown.to_string();
    meta.branch = branch.to_string();
    meta.job = Some(job_id.to_string());
    meta.last_used_ms = now_ms();
    write_meta(&dir, &meta);
    Ok((
        Slot {
            repo_dir,
            name,
            dir,
            recovered,
            meta,
            _lock: l,
        },
        lock_ms,
    ))
}

impl Slot {
    /// The stable checkout.
    pub(crate) fn src(&self) -> PathBuf {
        self.dir.join("src")
    }

    /// The target directory of `key`.
    pub(crate) fn target(&self, key: &str) -> PathBuf {
        self.dir.join("target").join(key)
    }

    /// `repo-id/slot-n`.
    pub(crate) fn label(&self) -> String {
        format!(
            "{}/{}",
            self.repo_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.name
        )
    }

    /// Check `sha` out at `src`, borrowing objects from the mirror (alternates). An existing checkout
    /// of this mirror is updated in place (`fresh` forces a new one). `Err(Failed)` with `missing` =
    /// the mirror lacks objects.
    ///
    /// Warm path: one git process (`checkout -f`, which resets every tracked file and the index to the
    /// commit), then the untracked files (ignored ones too: `git clean -ffdx`'s set) are removed in
    /// process from the index's path list (`worktree::clean`); an index this reader does not know
    /// (another version, split or sparse) falls back to `git clean -ffdx`, and so does a checkout whose
    /// git runs as the step user (deleting runs with that user's rights, not the agent's).
    pub(crate) async fn checkout(
        &self,
        mirror: &Path,
        sha: &str,
        fresh: bool,
        creds: &Credentials,
        limits: &Limits,
        log: Sink<'_>,
    ) -> Result<(), CloneError> {
        let src = self.src();
        let objects = mirror.join("objects");
        let alt = src.join(".git/objects/info/alternates");
        let mut reuse = !fresh
            && std::fs::read_to_string(&alt)
                .map(|s| s.trim() == objects.to_string_lossy())
                .unwrap_or(false);
        if reuse {
            // The last job's steps could write this `.git`: make it the agent's again, or start anew.
            if let Err(why) = super::gitdir::reset_checkout(&src) {
                log(format!(
                    "[raibid] the checkout's .git is not as the agent made it ({why}); checking out anew"
                ));
                reuse = false;
            }
        }
        if !reuse {
            let _ = std::fs::remove_dir_all(&src);
            super::mkdirs(&src, limits.user.as_ref())
                .map_err(|e| CloneError::Failed(format!("checkout dir: {e}")))?;
            let o = run(&src, &["init", "-q"], creds, None, limits, log).await?;
            if !o.ok {
                return Err(CloneError::Failed("git init failed".into()));
            }
            let _ = std::fs::remove_file(&alt);
            super::gitdir::write_new(&alt, format!("{}\n", objects.to_string_lossy()).as_bytes())
                .map_err(|e| CloneError::Failed(format!("alternates: {e}")))?;
            super::own(&alt, limits.user.as_ref());
        } else {
            // A killed job may have left git's index lock behind.
            let _ = std::fs::remove_file(src.join(".git/index.lock"));
        }
        let o = run(
            &src,
            &["checkout", "-q", "-f", "--detach", sha, "--"],
            creds,
            None,
            limits,
            log,
        )
        .await?;
        if !o.ok {
            return Err(CloneError::Failed(format!(
                "missing: commit {sha} could not be checked out"
            )));
        }
        if reuse {
            let in_process = if limits.user.is_none() {
                let dir = src.clone();
                tokio::task::spawn_blocking(move || super::worktree::clean(&dir))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            } else {
                Err("git runs as the step user".to_string())
            };
            match in_process {
                Ok(0) => {}
                Ok(n) => log(format!(
                    "[raibid] removed {n} untracked path(s) from the checkout"
                )),
                Err(why) => {
                    log(format!("[raibid] cleaning the checkout with git ({why})"));
                    let o = run(&src, &["clean", "-q", "-ffdx"], creds, None, limits, log).await?;
                    if !o.ok {
                        return Err(CloneError::Failed("git clean failed".into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Make sure `key` has a target directory: `warm` (it had one), `seeded:<slot>` or `cold`.
    pub(crate) async fn prepare_target(
        &mut self,
        key: &str,
        defaults: &[String],
        limits: &Limits,
        log: Sink<'_>,
    ) -> String {
        let target = self.target(key);
        if target.is_dir() {
            return "warm".into();
        }
        let parent = self.dir.join("target");
        let _ = super::mkdirs(&parent, limits.user.as_ref());
        for (name, meta) in preference(&self.repo_dir, &self.meta.branch, defaults) {
            if name == self.name || !meta.keys.contains_key(key) {
                continue;
            }
            let donor = self.repo_dir.join(&name).join("target").join(key);
            if !donor.is_dir() {
                continue;
            }
            // A consistent source: a slot nobody holds (hold its lock while copying), or a held slot
            // in which no cargo runs right now (hold cargo's own build locks while copying).
            let held: Vec<FileLock> =
                match lock::try_lock(&self.repo_dir.join(format!("{name}.lock"))) {
                    Ok(Some(l)) => vec![l],
                    _ => match cargo_locks(&donor) {
                        Some(v) => v,
                        None => continue,
                    },
                };
            let tmp = parent.join(format!(".{key}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            log(format!(
                "[raibid] seeding target directory of key {key} from {name}"
            ));
            let mut cp = tokio::process::Command::new("cp");
            if let Some(u) = &limits.user {
                cp.uid(u.uid).gid(u.gid);
            }
            cp.arg("-a")
                .arg("--reflink=auto")
                .arg(&donor)
                .arg(&tmp)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let remaining = limits.deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, cp.output()).await {
                Ok(Ok(o)) if o.status.success() => {
                    if std::fs::rename(&tmp, &target).is_ok() {
                        // Cargo judges workspace crates by mtimes against paths relative to the package
                        // root, so the donor's units of another commit could pass for fresh if they
                        // were built after this checkout was written. Make every checked-out file newer
                        // than anything copied: the workspace crates rebuild, dependencies stay fresh.
                        let src = self.src();
                        let _ = tokio::task::spawn_blocking(move || touch_tree(&src)).await;
                        return format!("seeded:{name}");
                    }
                }
                Ok(Ok(o)) => log(format!(
                    "[raibid] seeding failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                _ => log("[raibid] seeding failed or timed out".into()),
            }
            let _ = std::fs::remove_dir_all(&tmp);
            drop(held);
            break;
        }
        let _ = super::mkdirs(&target, limits.user.as_ref());
        "cold".into()
    }

    /// The job is done with the slot: record use and sizes. Returns the slot's bytes.
    pub(crate) async fn finish(&mut self, key: Option<&str>) -> u64 {
        let now = now_ms();
        let src = self.src();
        let target = key.map(|k| self.target(k));
        let (src_bytes, key_bytes) =
            tokio::task::spawn_blocking(move || (du(&src), target.as_deref().map(du)))
                .await
                .unwrap_or((0, None));
        self.meta.src_bytes = src_bytes;
        if let (Some(k), Some(b)) = (key, key_bytes) {
            self.meta.keys.insert(
                k.to_string(),
                KeyMeta {
                    last_used_ms: now,
                    bytes: b,
                },
            );
        }
        self.meta.job = None;
        self.meta.last_used_ms = now;
        write_meta(&self.dir, &self.meta);
        self.meta.src_bytes + self.meta.keys.values().map(|k| k.bytes).sum::<u64>()
    }
}

/// Set the mtime of every file under `dir` (but `.git`) to now.
fn touch_tree(dir: &Path) {
    let now = std::time::SystemTime::now();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                if e.file_name() != ".git" {
                    stack.push(e.path());
                }
            } else if t.is_file() {
                if let Ok(f) = std::fs::File::options().write(true).open(e.path()) {
                    let _ = f.set_modified(now);
                }
            }
        }
    }
}

/// Take cargo's build-directory locks (`<target>/<profile>/.cargo-lock`, also under a target triple)
/// without waiting: `None` if a cargo holds one.
fn cargo_locks(target: &Path) -> Option<Vec<FileLock>> {
    let mut files = Vec::new();
    for d1 in std::fs::read_dir(target).ok()?.flatten() {
        let p1 = d1.path();
        if p1.join(".cargo-lock").is_file() {
            files.push(p1.join(".cargo-lock"));
        }
        if let Ok(rd) = std::fs::read_dir(&p1) {
            for d2 in rd.flatten() {
                let p2 = d2.path().join(".cargo-lock");
                if p2.is_file() {
                    files.push(p2);
                }
            }
        }
    }
    let mut held = Vec::new();
    for f in files {
        match lock::try_lock(&f) {
            Ok(Some(l)) => held.push(l),
            _ => return None,
        }
    }
    Some(held)
}

/// One line of the eviction pass: a target directory (`key`), a slot's checkout (`slot`, no key) or a
/// repository's git mirror (`mirror`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    pub(crate) repo_id: String,
    pub(crate) slot: String,
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) mirror: bool,
    /// A repository's `CARGO_HOME` (`cargo/<repo-id>`).
    #[serde(default)]
    pub(crate) cargo_home: bool,
    pub(crate) bytes: u64,
    pub(crate) last_used_ms: i64,
}

/// Evict until everything in the cache that grows per repository (target directories, slot checkouts,
/// git mirrors) is under `max_bytes`, least recently used first within each tier: target directories,
/// then slots left with no target directory, then git mirrors. Nothing in use goes: a slot a job
/// holds (its lock), a mirror being updated (its lock) or borrowed from by a held slot of its
/// repository (alternates). `current` (held by the caller) keeps `keep_key`. Returns the evicted.
pub(crate) fn evict(
    root: &Path,
    max_bytes: u64,
    current: Option<(&Slot, Option<&str>)>,
) -> Vec<Entry> {
    let targets = root.join("targets");
    let mut all = Vec::new();
    let mut total = 0u64;
    if let Ok(rd) = std::fs::read_dir(&targets) {
        for r in rd.flatten() {
            let repo_id = r.file_name().to_string_lossy().into_owned();
            for (_, slot) in slot_names(&r.path()) {
                let m = read_meta(&r.path().join(&slot));
                total += m.src_bytes;
                all.push(Entry {
                    repo_id: repo_id.clone(),
                    slot: slot.clone(),
                    key: None,
                    mirror: false,
                    cargo_home: false,
                    bytes: m.src_bytes,
                    last_used_ms: m.last_used_ms,
                });
                for (k, km) in &m.keys {
                    total += km.bytes;
                    all.push(Entry {
                        repo_id: repo_id.clone(),
                        slot: slot.clone(),
                        key: Some(k.clone()),
                        mirror: false,
                        cargo_home: false,
                        bytes: km.bytes,
                        last_used_ms: km.last_used_ms,
                    });
                }
            }
        }
    }
    for (repo_id, bytes, last_used_ms) in super::mirror::list(root) {
        total += bytes;
        all.push(Entry {
            repo_id,
            slot: String::new(),
            key: None,
            mirror: true,
            cargo_home: false,
            bytes,
            last_used_ms,
        });
    }
    for (repo_id, m) in cargo_homes(root) {
        total += m.bytes;
        all.push(Entry {
            repo_id,
            slot: String::new(),
            key: None,
            mirror: false,
            cargo_home: true,
            bytes: m.bytes,
            last_used_ms: m.last_used_ms,
        });
    }
    let mut evicted = Vec::new();
    if total <= max_bytes {
        return evicted;
    }
    let tier = |e: &Entry| match (e.mirror, e.cargo_home, e.key.is_some()) {
        (false, false, true) => 0,
        (false, false, false) => 1,
        (false, true, _) => 2,
        (true, _, _) => 3,
    };
    all.sort_by_key(|e| (tier(e), e.last_used_ms));
    for e in all {
        if total <= max_bytes {
            break;
        }
        let repo_dir = targets.join(&e.repo_id);
        if e.cargo_home {
            if current.is_some_and(|(s, _)| s.repo_dir == repo_dir)
                || !evict_cargo_home(root, &repo_dir, &e.repo_id)
            {
                continue;
            }
            total = total.saturating_sub(e.bytes);
            evicted.push(e);
            continue;
        }
        if e.mirror {
            if current.is_some_and(|(s, _)| s.repo_dir == repo_dir)
                || !evict_mirror(root, &repo_dir, &e.repo_id)
            {
                continue;
            }
            total = total.saturating_sub(e.bytes);
            evicted.push(e);
            continue;
        }
        let slot_dir = repo_dir.join(&e.slot);
        let is_current = current.is_some_and(|(s, _)| s.dir == slot_dir);
        let _held;
        if is_current {
            let keep = current.and_then(|(_, k)| k);
            if e.key.is_none() || e.key.as_deref() == keep {
                continue;
            }
        } else {
            match lock::try_lock(&repo_dir.join(format!("{}.lock", e.slot))) {
                Ok(Some(l)) => _held = l,
                _ => continue,
            }
        }
        let mut m = read_meta(&slot_dir);
        match &e.key {
            Some(k) => {
                remove_aside(&slot_dir.join("target"), k);
                m.keys.remove(k);
                write_meta(&slot_dir, &m);
            }
            None => {
                if !m.keys.is_empty() {
                    continue;
                }
                remove_aside(&repo_dir, &e.slot);
            }
        }
        total = total.saturating_sub(e.bytes);
        evicted.push(e);
    }
    evicted
}

/// Delete the mirror of `repo_id` if nobody uses it: its lock (an update) and every slot lock of the
/// repository (a checkout borrowing its objects) are taken without waiting, held while deleting. The
/// slots' checkouts lose their alternates, so the next job of each starts a fresh checkout from the
/// rebuilt mirror instead of trusting a checkout whose objects are gone.
fn evict_mirror(root: &Path, repo_dir: &Path, repo_id: &str) -> bool {
    let base = root.join("git");
    let Ok(Some(_mirror_lock)) = lock::try_lock(&base.join(format!("{repo_id}.lock"))) else {
        return false;
    };
    let mut held = Vec::new();
    let slots = slot_names(repo_dir);
    for (_, slot) in &slots {
        match lock::try_lock(&repo_dir.join(format!("{slot}.lock"))) {
            Ok(Some(l)) => held.push(l),
            _ => return false,
        }
    }
    for (_, slot) in &slots {
        let _ = std::fs::remove_file(repo_dir.join(slot).join("src/.git/objects/info/alternates"));
    }
    remove_aside(&base, &format!("{repo_id}.git"));
    true
}

/// Size and last use of a repository's `CARGO_HOME`, recorded by the agent after each of its jobs
/// (`cargo/<repo-id>.meta`): a step writes the registry cache there, and it counts towards the cap.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub(crate) struct CargoHomeMeta {
    pub(crate) bytes: u64,
    pub(crate) last_used_ms: i64,
}

/// Record the size of `repo_id`'s `CARGO_HOME` after a job of it (the walk never follows a link).
pub(crate) fn record_cargo_home(root: &Path, repo_id: &str) -> u64 {
    let base = root.join("cargo");
    let bytes = du(&base.join(repo_id));
    let m = CargoHomeMeta {
        bytes,
        last_used_ms: chrono::Utc::now().timestamp_millis(),
    };
    if let Ok(b) = serde_json::to_vec(&m) {
        let tmp = base.join(format!(".{repo_id}.meta.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if super::gitdir::write_new(&tmp, &b).is_ok() {
            let _ = std::fs::rename(&tmp, base.join(format!("{repo_id}.meta")));
        }
    }
    bytes
}

fn cargo_homes(root: &Path) -> Vec<(String, CargoHomeMeta)> {
    let Ok(rd) = std::fs::read_dir(root.join("cargo")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let repo = name.strip_suffix(".meta")?.to_string();
            if repo.starts_with('.') {
                return None;
            }
            let m = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((repo, m))
        })
        .collect()
}

/// Delete `repo_id`'s `CARGO_HOME` if no job of the repository runs (every slot lock taken without
/// waiting, held while deleting).
fn evict_cargo_home(root: &Path, repo_dir: &Path, repo_id: &str) -> bool {
    let mut held = Vec::new();
    for (_, slot) in slot_names(repo_dir) {
        match lock::try_lock(&repo_dir.join(format!("{slot}.lock"))) {
            Ok(Some(l)) => held.push(l),
            _ => return false,
        }
    }
    let base = root.join("cargo");
    remove_aside(&base, repo_id);
    let _ = std::fs::remove_file(base.join(format!("{repo_id}.meta")));
    true
}

/// Rename `parent/name` aside (so nothing half-deleted is ever used), then delete it.
fn remove_aside(parent: &Path, name: &str) {
    let from = parent.join(name);
    let trash = parent.join(format!(".evicted-{name}-{}", std::process::id()));
    if std::fs::rename(&from, &trash).is_ok() {
        let _ = std::fs::remove_dir_all(&trash);
    } else {
        let _ = std::fs::remove_dir_all(&from);
    }
}

/// A job's hold on the cache: its slot (locked), key and figures.
pub(crate) struct JobCache {
    pub(crate) repo_id: String,
    pub(crate) slot: Slot,
    pub(crate) key: Option<String>,
    pub(crate) stats: CacheStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(root: &Path, repo: &str, slot: &str, keys: &[(&str, i64, u64)]) -> PathBuf {
        let dir = root.join("targets").join(repo).join(slot);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let mut m = Meta {
            repo: repo.into(),
            branch: "main".into(),
            ..Meta::default()
        };
        for (k, used, bytes) in keys {
            std::fs::create_dir_all(dir.join("target").join(k)).unwrap();
            m.keys.insert(
                (*k).to_string(),
                KeyMeta {
                    last_used_ms: *used,
                    bytes: *bytes,
                },
            );
            m.last_used_ms = m.last_used_ms.max(*used);
        }
        write_meta(&dir, &m);
        dir
    }

    #[test]
    fn eviction_takes_least_recently_used_targets_of_free_slots_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a0 = make(root, "a", "slot-0", &[("k1", 100, 1000), ("k2", 400, 1000)]);
        let a1 = make(root, "a", "slot-1", &[("k1", 200, 1000)]);
        let b0 = make(root, "b", "slot-0", &[("k9", 50, 5000)]);
        // b/slot-0 (the oldest and biggest) is held by a running job: a real flock from this process.
        let held = lock::try_lock(&root.join("targets/b/slot-0.lock"))
            .unwrap()
            .unwrap();
        // 8000 bytes, cap 7000: the oldest free target goes (a/slot-0 k1), then the total fits.
        let ev = evict(root, 7000, None);
        assert_eq!(
            ev.iter()
                .map(|e| (e.repo_id.as_str(), e.slot.as_str(), e.key.as_deref()))
                .collect::<Vec<_>>(),
            [("a", "slot-0", Some("k1"))]
        );
        assert!(!a0.join("target/k1").exists());
        assert!(a0.join("target/k2").exists());
        assert!(!read_meta(&a0).keys.contains_key("k1"));
        assert!(
            b0.join("target/k9").exists(),
            "a held slot is never evicted"
        );
        // Cap 0: everything free goes, slots left without targets too; the held one stays.
        let ev = evict(root, 0, None);
        assert!(ev.iter().all(|e| e.repo_id == "a"), "{ev:?}");
        assert!(!a0.exists() && !a1.exists());
        assert!(b0.join("target/k9").exists());
        drop(held);
        let ev = evict(root, 0, None);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(!b0.join("target/k9").exists());
    }

    fn mirror(root: &Path, repo: &str, used_secs: u64) -> PathBuf {
        let dir = root.join("git").join(format!("{repo}.git"));
        std::fs::create_dir_all(dir.join("objects/pack")).unwrap();
        std::fs::write(dir.join("objects/pack/p.pack"), vec![7u8; 64 << 10]).unwrap();
        let marker = std::fs::File::create(dir.join(super::super::mirror::OK_MARKER)).unwrap();
        marker
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(used_secs))
            .unwrap();
        dir
    }

    #[test]
    fn mirrors_count_towards_the_cap_and_go_last_and_never_while_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Mirrors last used long before any target directory: still, targets go first.
        let ma = mirror(root, "a", 1);
        let mb = mirror(root, "b", 2);
        let mc = mirror(root, "c", 3);
        let a0 = make(root, "a", "slot-0", &[("k1", 100_000, 1000)]);
        let b0 = make(root, "b", "slot-0", &[("k9", 50_000, 5000)]);
        // b's slot is held by a job (its checkout borrows b's mirror); c's mirror is being updated.
        let held_slot = lock::try_lock(&root.join("targets/b/slot-0.lock"))
            .unwrap()
            .unwrap();
        let held_mirror = lock::try_lock(&root.join("git/c.lock")).unwrap().unwrap();
        let mirrors: u64 = super::super::mirror::list(root).iter().map(|m| m.1).sum();
        assert!(mirrors >= 3 * (64 << 10), "{mirrors}");
        // One byte over the cap: the oldest free target directory goes, not an (older) mirror.
        let ev = evict(root, mirrors + 6000 - 1, None);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].key.as_deref(), Some("k1"));
        assert!(ma.exists() && mb.exists() && mc.exists());
        // Cap 0: a's slot, then a's mirror; b's mirror stays (its slot is held), so does c's (locked).
        let ev = evict(root, 0, None);
        let shown: Vec<(&str, bool, Option<&str>)> = ev
            .iter()
            .map(|e| (e.repo_id.as_str(), e.mirror, e.key.as_deref()))
            .collect();
        assert_eq!(shown, [("a", false, None), ("a", true, None)], "{ev:?}");
        assert!(!a0.exists() && !ma.exists());
        assert!(mb.exists() && mc.exists() && b0.join("target/k9").exists());
        // Once nothing holds them, b's and c's mirrors go too.
        drop(held_mirror);
        drop(held_slot);
        let ev = evict(root, 0, None);
        assert!(ev.iter().any(|e| e.repo_id == "c" && e.mirror), "{ev:?}");
        assert!(!mb.exists() && !mc.exists(), "{ev:?}");
        assert!(super::super::mirror::list(root).is_empty());
    }

    /// Issue 17 §6: a repository's CARGO_HOME (which its steps write) counts towards the cap and goes
    /// after its target directories and slots, before mirrors, never while a job of it runs.
    #[test]
    fn cargo_homes_count_towards_the_cap_and_never_go_while_a_job_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a0 = make(root, "a", "slot-0", &[("k1", 100_000, 1000)]);
        let _b0 = make(root, "b", "slot-0", &[]);
        for repo in ["a", "b"] {
            let home = root.join("cargo").join(repo).join("registry/cache");
            std::fs::create_dir_all(&home).unwrap();
            std::fs::write(home.join("crate.crate"), vec![1u8; 40_000]).unwrap();
            assert!(record_cargo_home(root, repo) >= 40_000);
        }
        let held = lock::try_lock(&root.join("targets/b/slot-0.lock"))
            .unwrap()
            .unwrap();
        // Under a cap that the targets alone would meet, the homes make it too big.
        let ev = evict(root, 50_000, None);
        let shown: Vec<(&str, bool, Option<&str>)> = ev
            .iter()
            .map(|e| (e.repo_id.as_str(), e.cargo_home, e.key.as_deref()))
            .collect();
        assert!(shown.contains(&("a", true, None)), "{ev:?}");
        assert!(!root.join("cargo/a").exists() && !root.join("cargo/a.meta").exists());
        assert!(!a0.join("target/k1").exists());
        // b's job runs (its slot is held): its home stays.
        assert!(
            root.join("cargo/b/registry/cache/crate.crate").exists(),
            "{ev:?}"
        );
        drop(held);
        let ev = evict(root, 0, None);
        assert!(
            ev.iter().any(|e| e.repo_id == "b" && e.cargo_home),
            "{ev:?}"
        );
        assert!(!root.join("cargo/b").exists());
    }

    #[test]
    fn branches_prefer_their_own_slot_then_a_default_branch() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("targets/r");
        for (slot, branch, used) in [
            ("slot-0", "main", 10),
            ("slot-1", "feat", 5),
            ("slot-2", "other", 20),
        ] {
            let d = repo.join(slot);
            std::fs::create_dir_all(&d).unwrap();
            write_meta(
                &d,
                &Meta {
                    branch: branch.into(),
                    last_used_ms: used,
                    ..Meta::default()
                },
            );
        }
        let defaults = vec!["main".to_string()];
        let order = |b: &str| {
            preference(&repo, b, &defaults)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(order("feat"), ["slot-1", "slot-0", "slot-2"]);
        assert_eq!(order("new-branch"), ["slot-0", "slot-2", "slot-1"]);
    }
}
