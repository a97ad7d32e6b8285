//! One bare git mirror per repository under `<cache>/git/<repo-id>.git`, updated under a lock with a
//! fetch of the wanted ref (only new objects travel), and trusted only when whole.
//!
//! - A mirror is trusted only once `raibid-mirror-ok` exists (written after `git init` finished); a
//!   directory without it (a kill during creation) is removed and rebuilt.
//! - Under the lock, leftovers of a killed fetch are removed first: stale `*.lock` files (git's ref
//!   locks; nobody else can hold them while we hold the mirror lock) and temporary packs.
//! - A fetch that fails for any reason but a timeout or a stop rebuilds the mirror once from scratch;
//!   so does a checkout that finds an object missing (see `super::slots::checkout`).
//! - The URL is passed on each fetch and never stored in the mirror, so no credential in a URL ever
//!   lands on disk; the token travels as a header only to forge hosts (`git::Credentials`).

use super::{CloneError, Sink};
use crate::git::{self, Credentials, Limits};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) const OK_MARKER: &str = "raibid-mirror-ok";
/// Packs a mirror may hold before a fetch repacks them into one (one pack per fetch otherwise). A
/// last resort: after each job, [`maintain`] rolls small packs up long before this.
const MAX_PACKS: usize = 50;
/// Past this many packs, the end of a job rolls the small ones up (`git repack --geometric=2`).
const ROLL_UP_PACKS: usize = 8;

fn pack_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("objects/pack"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0)
}

/// What updating the mirror did.
pub(crate) struct MirrorOutcome {
    /// The bare repository.
    pub(crate) dir: PathBuf,
    /// The commit to check out.
    pub(crate) sha: String,
    /// The commit was already there (no fetch).
    pub(crate) hit: bool,
    /// Objects / pack bytes the fetch added.
    pub(crate) objects: u64,
    pub(crate) bytes: u64,
    /// Milliseconds waiting for the mirror lock.
    pub(crate) lock_ms: u64,
    /// The mirror lock, still held: the caller drops it once it holds a slot of the repository (from
    /// then on the held slot keeps eviction away from the mirror its checkout borrows from).
    pub(crate) lock: Option<super::lock::FileLock>,
}

/// Run git in `dir`, logging the command (URL redacted) and its output.
pub(crate) async fn run(
    dir: &Path,
    args: &[&str],
    creds: &Credentials,
    url: Option<&str>,
    limits: &Limits,
    log: Sink<'_>,
) -> Result<git::GitOutput, CloneError> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if Some(*a) == url {
                git::redact_url(a)
            } else {
                (*a).to_string()
            }
        })
        .collect();
    log(format!("$ git {}", shown.join(" ")));
    match git::git(dir, args, creds, url, limits).await {
        Ok(o) => {
            if !o.ok {
                for l in &o.lines {
                    log(l.clone());
                }
            }
            Ok(o)
        }
        Err(git::GitError::TimedOut) => Err(CloneError::TimedOut),
        Err(git::GitError::Stopped) => Err(CloneError::Stopped),
        Err(e) => Err(CloneError::Failed(e.to_string())),
    }
}

/// `refs/heads/main` for `main`; full ref names stay as they are.
pub(crate) fn full_ref(git_ref: &str) -> String {
    if git_ref.starts_with("refs/") {
        git_ref.to_string()
    } else {
        format!("refs/heads/{git_ref}")
    }
}

/// The node's mirrors: (repo id, bytes on disk, last use in Unix ms). Last use is the mtime of the
/// mirror's marker, set by every update (a mirror without its marker is listed with last use 0: it is
/// rebuilt before any use anyway).
pub(crate) fn list(root: &Path) -> Vec<(String, u64, i64)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(root.join("git")) else {
        return v;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".git") else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let last = std::fs::metadata(e.path().join(OK_MARKER))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        v.push((id.to_string(), super::du(&e.path()), last));
    }
    v
}

/// Bring the mirror of `url` up to `sha` (or the tip of `git_ref`) and say which commit to check out.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update(
    root: &Path,
    repo_id: &str,
    url: &str,
    git_ref: &str,
    sha: Option<&str>,
    creds: &Credentials,
    limits: &Limits,
    log: Sink<'_>,
) -> Result<MirrorOutcome, CloneError> {
    let base = root.join("git");
    super::mkdirs(&base, limits.user.as_ref())
        .map_err(|e| CloneError::Failed(format!("cache dir: {e}")))?;
    let dir = base.join(format!("{repo_id}.git"));
    let t = Instant::now();
    let stop = limits.stop.clone();
    let lock = super::lock::lock(
        &base.join(format!("{repo_id}.lock")),
        limits.deadline,
        || *stop.borrow() != crate::stop::Stop::None,
    )
    .await
    .map_err(CloneError::from)?;
    let lock_ms = t.elapsed().as_millis() as u64;
    // Last use, for eviction (least recently used first).
    let _ = std::fs::File::options()
        .write(true)
        .open(dir.join(OK_MARKER))
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    let mut rebuilt = false;
    loop {
        if dir.join(OK_MARKER).exists() {
            if let Err(why) = super::gitdir::verify_mirror(&dir) {
                log(format!(
                    "[raibid] the mirror is not as the agent made it ({why}); rebuilding the mirror"
                ));
                tracing::warn!(repo = %repo_id, %why, "cache: mirror tampered with; rebuilding");
                invalidate_locked(&dir);
            }
        }
        if dir.join(OK_MARKER).exists() {
            remove_leftovers(&dir);
            if let Err(pack) = verify_packs(&dir) {
                log(format!(
                    "[raibid] mirror pack {pack} is damaged; rebuilding the mirror"
                ));
                invalidate_locked(&dir);
            }
        }
        if !dir.join(OK_MARKER).exists() {
            create(&base, &dir, creds, limits, log).await?;
        }
        match fetch(&dir, url, git_ref, sha, creds, limits, log).await {
            Ok((sha, hit, objects, bytes)) => {
                return Ok(MirrorOutcome {
                    dir,
                    sha,
                    hit,
                    objects,
                    bytes,
                    lock_ms,
                    lock: Some(lock),
                })
            }
            // The repository or the ref is not there (or refused us): a fact about the remote, the
            // mirror is fine: keep it, and do not ask the remote the same question twice.
            Err(Failure::Remote(e)) => return Err(CloneError::Failed(e)),
            Err(Failure::Local(CloneError::Failed(e))) if !rebuilt => {
                log(format!(
                    "[raibid] mirror update failed ({e}); rebuilding the mirror from scratch"
                ));
                invalidate_locked(&dir);
                rebuilt = true;
            }
            Err(Failure::Local(e)) => return Err(e),
        }
    }
}

/// After a job, off the push → first-line path: past [`ROLL_UP_PACKS`] packs, roll the small ones up
/// into one with `git repack -d --geometric=2` (each pack at least twice the size of the next smaller:
/// the big history pack is left alone, so the cost is that of the recent packs; the pack count stays
/// logarithmic in the number of fetches, and so does every lookup that reads the indexes). Every
/// object is kept (the packs' contents are repacked as they are; nothing is pruned), so checkouts
/// that borrow from the mirror never lose one. Skipped when another job holds the mirror lock.
pub(crate) async fn maintain(root: &Path, repo_id: &str, creds: &Credentials, limits: &Limits) {
    let base = root.join("git");
    let dir = base.join(format!("{repo_id}.git"));
    if pack_count(&dir) <= ROLL_UP_PACKS || !dir.join(OK_MARKER).exists() {
        return;
    }
    let Ok(Some(_lock)) = super::lock::try_lock(&base.join(format!("{repo_id}.lock"))) else {
        return;
    };
    let before = pack_count(&dir);
    let ok = matches!(
        git::git(&dir, &["repack", "-d", "-q", "--geometric=2"], creds, None, limits).await,
        Ok(o) if o.ok
    );
    tracing::info!(repo = %repo_id, packs_before = before, packs_after = pack_count(&dir), ok, "cache: mirror packs rolled up");
}

/// Mark a mirror untrusted (the next update rebuilds it). Takes the mirror lock.
pub(crate) async fn invalidate(root: &Path, repo_id: &str, limits: &Limits) {
    let base = root.join("git");
    let stop = limits.stop.clone();
    if let Ok(_l) = super::lock::lock(
        &base.join(format!("{repo_id}.lock")),
        limits.deadline,
        || *stop.borrow() != crate::stop::Stop::None,
    )
    .await
    {
        invalidate_locked(&base.join(format!("{repo_id}.git")));
    }
}

fn invalidate_locked(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(OK_MARKER));
}

async fn create(
    base: &Path,
    dir: &Path,
    creds: &Credentials,
    limits: &Limits,
    log: Sink<'_>,
) -> Result<(), CloneError> {
    if dir.exists() {
        // Move it aside first so a half-deleted tree is never mistaken for a mirror.
        let trash = base.join(format!(
            ".trash-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        if std::fs::rename(dir, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(&trash);
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let d = dir.to_string_lossy().into_owned();
    let o = run(
        base,
        &["init", "-q", "--bare", &d],
        creds,
        None,
        limits,
        log,
    )
    .await?;
    if !o.ok {
        return Err(CloneError::Failed("git init of the mirror failed".into()));
    }
    // gc never runs on its own (it could prune objects a workspace borrows), nor does `git maintenance`
    // (a fetch would start `maintenance run --auto` after every update: one more process on the
    // push → first-line path; fetches pass `-c maintenance.auto=false` for mirrors made before this
    // setting); fetched packs are kept as packs (countable; rolled up after jobs by `maintain`). Fetches
    // also skip the forced-update check (a history walk after a force push) and the submodule scan of
    // the fetched commits: nothing here uses either.
    for (k, v) in [
        ("gc.auto", "0"),
        ("maintenance.auto", "false"),
        ("core.logAllRefUpdates", "false"),
        ("fetch.unpackLimit", "1"),
        ("transfer.unpackLimit", "1"),
    ] {
        let _ = git::git(dir, &["config", k, v], creds, None, limits).await;
    }
    std::fs::write(dir.join(OK_MARKER), b"")
        .map_err(|e| CloneError::Failed(format!("mirror marker: {e}")))?;
    Ok(())
}

/// Remove what a killed git leaves behind (we hold the mirror lock, so no git of ours is running).
fn remove_leftovers(dir: &Path) {
    fn walk(d: &Path) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p);
            } else if p.extension().is_some_and(|x| x == "lock") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    walk(&dir.join("refs"));
    for f in [
        "packed-refs.lock",
        "shallow.lock",
        "config.lock",
        "HEAD.lock",
        "index.lock",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    for sub in ["objects/pack", "objects"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("tmp_") || n.starts_with("incoming-") || n.starts_with(".tmp-") {
                    let p = e.path();
                    if p.is_dir() {
                        let _ = std::fs::remove_dir_all(&p);
                    } else {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
    }
}

/// Every pack is whole: it exists beside its index and ends with the checksum the index records
/// (a truncated or half-written pack fails this; O(1) per pack). Err names the damaged pack.
///
/// Packs never change once written: a pack this process verified is checked again only when its or its
/// index's size or mtime differ from what was verified (a truncation, a rewrite), so an update costs a
/// `stat` per pack, not two opens and reads.
fn verify_packs(dir: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    type Seen = std::collections::HashMap<PathBuf, PackStamp>;
    static VERIFIED: std::sync::OnceLock<std::sync::Mutex<Seen>> = std::sync::OnceLock::new();
    let verified = VERIFIED.get_or_init(Default::default);
    let Ok(rd) = std::fs::read_dir(dir.join("objects/pack")) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let idx = e.path();
        if idx.extension().is_none_or(|x| x != "idx") {
            continue;
        }
        let stamp = pack_stamp(&idx);
        if let (Some(st), Ok(v)) = (stamp, verified.lock()) {
            if v.get(&idx) == Some(&st) {
                continue;
            }
        }
        let name = idx
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pack = idx.with_extension("pack");
        let check = || -> Option<bool> {
            let mut i = std::fs::File::open(&idx).ok()?;
            let ilen = i.metadata().ok()?.len();
            if ilen < 40 {
                return Some(false);
            }
            i.seek(SeekFrom::Start(ilen - 40)).ok()?;
            let mut want = [0u8; 20];
            i.read_exact(&mut want).ok()?;
            let mut p = std::fs::File::open(&pack).ok()?;
            let plen = p.metadata().ok()?.len();
            if plen < 32 {
                return Some(false);
            }
            p.seek(SeekFrom::Start(plen - 20)).ok()?;
            let mut got = [0u8; 20];
            p.read_exact(&mut got).ok()?;
            Some(got == want)
        };
        if check() != Some(true) {
            if let Ok(mut v) = verified.lock() {
                v.remove(&idx);
            }
            return Err(name);
        }
        if let (Some(st), Ok(mut v)) = (stamp, verified.lock()) {
            v.insert(idx, st);
        }
    }
    Ok(())
}

/// Sizes and mtimes of a pack's index and data file.
type PackStamp = (u64, std::time::SystemTime, u64, std::time::SystemTime);

fn pack_stamp(idx: &Path) -> Option<PackStamp> {
    let i = std::fs::metadata(idx).ok()?;
    let p = std::fs::metadata(idx.with_extension("pack")).ok()?;
    Some((i.len(), i.modified().ok()?, p.len(), p.modified().ok()?))
}

/// Objects and bytes in the mirror's packs (object counts from the `.idx` fan-out tables).
fn pack_totals(dir: &Path) -> (u64, u64) {
    let mut objects = 0;
    let mut bytes = 0;
    if let Ok(rd) = std::fs::read_dir(dir.join("objects/pack")) {
        for e in rd.flatten() {
            let p = e.path();
            match p.extension().and_then(|x| x.to_str()) {
                Some("pack") => bytes += e.metadata().map(|m| m.len()).unwrap_or(0),
                Some("idx") => objects += super::pack::idx_count(&p).unwrap_or(0),
                _ => {}
            }
        }
    }
    (objects, bytes)
}

/// Why a mirror update did not fetch.
enum Failure {
    /// The remote answered: no such repository or ref, or it refused us. Rebuilding the mirror would
    /// not change that.
    Remote(String),
    /// Anything else (the mirror may be at fault: rebuilt once), or a timeout / stop.
    Local(CloneError),
}

impl From<CloneError> for Failure {
    fn from(e: CloneError) -> Failure {
        Failure::Local(e)
    }
}

/// What git says when the remote, not the local repository, is why a fetch failed (git runs in the C
/// locale: these are its own words).
const REMOTE_REFUSALS: [&str; 12] = [
    "couldn't find remote ref",
    "does not appear to be a git repository",
    "could not read from remote repository",
    "not our ref",
    "repository not found",
    "' not found",
    "authentication failed",
    "unable to access",
    "could not resolve host",
    "terminal prompts disabled",
    "permission denied",
    "the requested url returned error",
];

fn remote_refused(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        (l.starts_with("fatal:") || l.starts_with("error:") || l.starts_with("remote:"))
            && REMOTE_REFUSALS.iter().any(|p| l.contains(p))
    })
}

/// `could not fetch <ref>: <git's one-line reason>`.
fn could_not_fetch(git_ref: &str, lines: &[String]) -> String {
    match git::one_line_reason(lines) {
        Some(why) => format!("could not fetch {git_ref}: {why}"),
        None => format!("could not fetch {git_ref}"),
    }
}

async fn fetch(
    dir: &Path,
    url: &str,
    git_ref: &str,
    sha: Option<&str>,
    creds: &Credentials,
    limits: &Limits,
    log: Sink<'_>,
) -> Result<(String, bool, u64, u64), Failure> {
    if let Some(sha) = sha {
        if super::pack::has_commit(dir, sha) {
            log(format!("[raibid] mirror has {sha}; nothing to fetch"));
            return Ok((sha.to_string(), true, 0, 0));
        }
    }
    let r = full_ref(git_ref);
    if let Some(source) = super::upload_pack::local_source(url) {
        match super::upload_pack::fetch(dir, &source, &r, sha, limits, log).await {
            Ok(f) => {
                let sha = sha.map_or(f.tip, str::to_string);
                return Ok(fetched(dir, sha, f.objects, f.bytes, creds, limits, log).await);
            }
            Err(super::upload_pack::FastFetch::TimedOut) => return Err(CloneError::TimedOut.into()),
            Err(super::upload_pack::FastFetch::Stopped) => return Err(CloneError::Stopped.into()),
            Err(super::upload_pack::FastFetch::NoRef(why)) if sha.is_none() => {
                log(format!("[raibid] {why}"));
                return Err(Failure::Remote(format!("could not fetch {git_ref}: {why}")));
            }
            Err(
                super::upload_pack::FastFetch::Unsupported(why)
                | super::upload_pack::FastFetch::NoRef(why),
            ) => {
                log(format!("[raibid] {why}; fetching with git fetch"));
            }
        }
    }
    let (objects0, bytes0) = pack_totals(dir);
    let spec = format!("+{r}:{r}");
    let o = run(
        dir,
        &[
            "-c",
            "maintenance.auto=false",
            "-c",
            "advice.fetchShowForcedUpdates=false",
            "fetch",
            "-q",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--no-show-forced-updates",
            url,
            "--",
            &spec,
        ],
        creds,
        Some(url),
        limits,
        log,
    )
    .await?;
    // With a sha, a missing ref is not the end: the commit itself is asked for below.
    if !o.ok && sha.is_none() && remote_refused(&o.lines) {
        return Err(Failure::Remote(could_not_fetch(git_ref, &o.lines)));
    }
    let mut fetched_ok = o.ok;
    let mut failed_lines = if o.ok { Vec::new() } else { o.lines };
    let sha = match sha {
        Some(s) => {
            if !super::pack::has_commit(dir, s) {
                // The ref moved on (or the sha is on no ref): ask for the commit itself.
                let o = run(
                    dir,
                    &[
                        "-c",
                        "maintenance.auto=false",
                        "-c",
                        "advice.fetchShowForcedUpdates=false",
                        "fetch",
                        "-q",
                        "--no-tags",
                        "--no-write-fetch-head",
                        "--no-recurse-submodules",
                        "--no-show-forced-updates",
                        url,
                        "--",
                        s,
                    ],
                    creds,
                    Some(url),
                    limits,
                    log,
                )
                .await?;
                if !o.ok && remote_refused(&o.lines) {
                    return Err(Failure::Remote(could_not_fetch(s, &o.lines)));
                }
                fetched_ok = o.ok && super::pack::has_commit(dir, s);
                if !o.ok {
                    failed_lines = o.lines;
                }
            }
            s.to_string()
        }
        None => {
            let o = git::git(
                dir,
                &["rev-parse", "--verify", "-q", &format!("{r}^{{commit}}")],
                creds,
                None,
                limits,
            )
            .await
            .map_err(|e| CloneError::Failed(e.to_string()))?;
            if !o.ok {
                fetched_ok = false;
            }
            o.stdout
        }
    };
    if !fetched_ok {
        return Err(CloneError::Failed(could_not_fetch(git_ref, &failed_lines)).into());
    }
    let (objects1, bytes1) = pack_totals(dir);
    let (objects, bytes) = (
        objects1.saturating_sub(objects0),
        bytes1.saturating_sub(bytes0),
    );
    Ok(fetched(dir, sha, objects, bytes, creds, limits, log).await)
}

/// A fetch added `objects` / `bytes`: say so, and repack once the mirror holds too many packs.
async fn fetched(
    dir: &Path,
    sha: String,
    objects: u64,
    bytes: u64,
    creds: &Credentials,
    limits: &Limits,
    log: Sink<'_>,
) -> (String, bool, u64, u64) {
    if pack_count(dir) > MAX_PACKS {
        let _ = run(dir, &["repack", "-a", "-d", "-q"], creds, None, limits, log).await;
    }
    log(format!(
        "[raibid] mirror fetched {objects} object(s), {bytes} pack byte(s)"
    ));
    (sha, false, objects, bytes)
}
