//! A mirror update from a local repository (`file://`) without `git fetch`: the agent speaks git's
//! protocol v2 to `git upload-pack` itself and streams the pack into `git index-pack`, so a fetch costs
//! two git processes of ours (three with upload-pack's `pack-objects`) instead of `git fetch`'s six
//! (fetch, a shell, upload-pack, pack-objects, index-pack, and `rev-list` for the connectivity check).
//! On this project's 2-vCPU machine each process costs 1–3 ms; the push → first-line path is mostly
//! these processes (docs/benchmarks.md, "Push → first line").
//!
//! What `git fetch` would have guaranteed, and how it still holds:
//! - **Whole packs only:** `index-pack` verifies every object of the pack it writes (and completes a
//!   thin pack from the mirror's objects); a cut stream fails it, leaving a `tmp_pack_*` that the next
//!   update removes (`mirror::remove_leftovers`).
//! - **The ref moves last:** only after `index-pack` succeeded, through `<ref>.lock` and a rename (as
//!   git does it), so a killed update never leaves a ref naming objects the mirror lacks.
//! - **Connectivity:** not re-walked (that is `git fetch`'s `rev-list`). The pack holds what the
//!   server found missing from the mirror's own tips; a mirror that nevertheless lacks an object is
//!   found by the checkout, which rebuilds the mirror (`slots::checkout` → `mirror::invalidate`).
//!
//! Anything this client does not expect (no protocol v2, another object format, an `ERR` line, a ref
//! name outside a conservative character set) ends in [`FastFetch::Unsupported`]; the caller then runs
//! `git fetch` as before. Only `file://` sources take this path: HTTP(S) and SSH fetches stay with
//! `git fetch` (with its credential handling, redirect policy and transports).

use super::Sink;
use crate::git::{self, Limits};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a fast fetch ended when it did not fetch.
#[derive(Debug)]
pub(crate) enum FastFetch {
    /// Not for this client (the reason is logged): use `git fetch`.
    Unsupported(String),
    /// The source answered and has no such ref: a fact about the source, not about the mirror (no
    /// `git fetch` would find it either).
    NoRef(String),
    /// The deadline passed (processes killed).
    TimedOut,
    /// The job was stopped (processes killed).
    Stopped,
}

/// How the answer without the wanted ref starts.
const NO_REF: &str = "the source has no ";

/// The local repository a `file://` URL names, if it is one this client handles.
pub(crate) fn local_source(url: &str) -> Option<PathBuf> {
    let u = url::Url::parse(url).ok()?;
    if u.scheme() != "file" || u.host_str().is_some_and(|h| !h.is_empty()) {
        return None;
    }
    u.to_file_path().ok()
}

/// A ref name this client writes as a loose ref: `refs/` then components of `[A-Za-z0-9._+@=,-]`,
/// none empty, starting with `.` or ending in `.lock`, no `..` (a subset of `git check-ref-format`;
/// anything else goes to `git fetch`, which checks names itself).
pub(crate) fn plain_ref(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("refs/") else {
        return false;
    };
    !rest.is_empty()
        && !name.contains("..")
        && rest.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && !c.ends_with(".lock")
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+@=,-".contains(&b))
        })
}

fn is_oid(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

// pkt-line (gitprotocol-common(5)): 4 hex digits of length (itself included), then the payload;
// 0000 flush, 0001 delimiter, 0002 response end.
const MAX_PKT: usize = 65520;

enum Pkt {
    Flush,
    Delim,
    End,
    Data(Vec<u8>),
}

fn pkt(s: &str) -> Vec<u8> {
    let mut v = format!("{:04x}", s.len() + 4).into_bytes();
    v.extend_from_slice(s.as_bytes());
    v
}

async fn read_pkt<R: AsyncRead + Unpin>(r: &mut R) -> Result<Pkt, String> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h)
        .await
        .map_err(|e| format!("upload-pack closed the stream: {e}"))?;
    let n = std::str::from_utf8(&h)
        .ok()
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or_else(|| format!("not a pkt-line length: {:?}", String::from_utf8_lossy(&h)))?;
    match n {
        0 => Ok(Pkt::Flush),
        1 => Ok(Pkt::Delim),
        2 => Ok(Pkt::End),
        3 => Err("pkt-line length 3".into()),
        n if n > MAX_PKT => Err(format!("pkt-line length {n} over {MAX_PKT}")),
        n => {
            let mut b = vec![0u8; n - 4];
            r.read_exact(&mut b)
                .await
                .map_err(|e| format!("upload-pack closed the stream: {e}"))?;
            if b.starts_with(b"ERR ") {
                return Err(format!(
                    "upload-pack: {}",
                    String::from_utf8_lossy(&b[4..]).trim_end()
                ));
            }
            Ok(Pkt::Data(b))
        }
    }
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("").trim_end_matches('\n')
}

/// The mirror's ref tips (loose refs and `packed-refs`): the `have`s of the negotiation.
fn tips(mirror: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![mirror.join("refs")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Ok(s) = std::fs::read_to_string(&p) {
                let s = s.trim();
                if is_oid(s) {
                    out.push(s.to_string());
                }
            }
        }
    }
    if let Ok(s) = std::fs::read_to_string(mirror.join("packed-refs")) {
        for l in s.lines() {
            if let Some((oid, _)) = l.split_once(' ') {
                if is_oid(oid) {
                    out.push(oid.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out.truncate(256);
    out
}

/// Point `name` at `oid` in the mirror: `<ref>.lock`, then a rename (git's own ref update).
fn write_ref(mirror: &Path, name: &str, oid: &str, limits: &Limits) -> std::io::Result<()> {
    let path = mirror.join(name);
    if let Some(parent) = path.parent() {
        super::mkdirs(parent, limits.user.as_ref())?;
    }
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    std::fs::write(&lock, format!("{oid}\n"))?;
    super::own(&lock, limits.user.as_ref());
    std::fs::rename(&lock, &path)
}

/// What a fast fetch did.
pub(crate) struct Fetched {
    /// The ref's new tip.
    pub(crate) tip: String,
    /// Objects and bytes of the pack it added (0 when the mirror had everything).
    pub(crate) objects: u64,
    pub(crate) bytes: u64,
}

/// Update `mirror` from the local repository `source`: the tip of `full_ref` and, if given and not
/// that tip, `sha` as well. `sha`, when given, is one the mirror lacks (the caller looked).
pub(crate) async fn fetch(
    mirror: &Path,
    source: &Path,
    full_ref: &str,
    sha: Option<&str>,
    limits: &Limits,
    log: Sink<'_>,
) -> Result<Fetched, FastFetch> {
    if !plain_ref(full_ref) {
        return Err(FastFetch::Unsupported(format!(
            "ref name `{full_ref}` is left to git fetch"
        )));
    }
    if sha.is_some_and(|s| !is_oid(s)) {
        return Err(FastFetch::Unsupported(
            "a commit that is not a full sha".into(),
        ));
    }
    log(format!(
        "$ git upload-pack {} | git index-pack --stdin --fix-thin  (protocol v2, {full_ref})",
        source.display()
    ));
    // As under `git fetch`: upload-pack finds the repository from the path (a work tree, its `.git`
    // or a bare repository) and runs with the mirror as its working directory.
    let mut up = git::command(mirror, limits);
    up.arg("upload-pack")
        .arg(source)
        .env("GIT_PROTOCOL", "version=2")
        .stdin(Stdio::piped())
        .stderr(Stdio::null());
    let mut up = up
        .spawn()
        .map_err(|e| FastFetch::Unsupported(format!("cannot run git upload-pack: {e}")))?;
    let up_pg = up.id().map(|p| p as i32).unwrap_or(0);
    let mut index: Option<tokio::process::Child> = None;
    let mut stop = limits.stop.clone();
    let deadline = tokio::time::Instant::from_std(limits.deadline);
    let r = {
        let work = converse(mirror, full_ref, sha, limits, &mut up, &mut index);
        tokio::select! {
            r = work => r.map_err(|e| {
                if e.starts_with(NO_REF) {
                    FastFetch::NoRef(e)
                } else {
                    FastFetch::Unsupported(e)
                }
            }),
            _ = tokio::time::sleep_until(deadline) => Err(FastFetch::TimedOut),
            _ = git::stopped(&mut stop) => Err(FastFetch::Stopped),
        }
    };
    if r.is_err() {
        git::kill_group(up_pg);
        if let Some(i) = &index {
            git::kill_group(i.id().map(|p| p as i32).unwrap_or(0));
        }
    }
    let _ = up.wait().await;
    if let Some(mut i) = index {
        let _ = i.wait().await;
    }
    r
}

async fn converse(
    mirror: &Path,
    full_ref: &str,
    sha: Option<&str>,
    limits: &Limits,
    up: &mut tokio::process::Child,
    index: &mut Option<tokio::process::Child>,
) -> Result<Fetched, String> {
    let mut tx = up.stdin.take().ok_or("no stdin")?;
    let mut rx = tokio::io::BufReader::with_capacity(1 << 16, up.stdout.take().ok_or("no stdout")?);
    // Capability advertisement.
    let mut caps = Vec::new();
    loop {
        match read_pkt(&mut rx).await? {
            Pkt::Flush => break,
            Pkt::Data(b) => caps.push(text(&b).to_string()),
            _ => return Err("unexpected delimiter in the capability advertisement".into()),
        }
    }
    if caps.first().map(String::as_str) != Some("version 2") {
        return Err("the server does not speak protocol v2".into());
    }
    if !caps.iter().any(|c| c == "fetch" || c.starts_with("fetch=")) {
        return Err("the server has no `fetch` command".into());
    }
    if !caps
        .iter()
        .any(|c| c == "ls-refs" || c.starts_with("ls-refs="))
    {
        return Err("the server has no `ls-refs` command".into());
    }
    let format = caps.iter().find_map(|c| c.strip_prefix("object-format="));
    if format.is_some_and(|f| f != "sha1") {
        return Err(format!(
            "object format {} is left to git fetch",
            format.unwrap_or("")
        ));
    }
    let format_arg = format.map(|_| pkt("object-format=sha1\n"));
    // ls-refs: the ref's tip.
    let mut req = pkt("command=ls-refs\n");
    if let Some(f) = &format_arg {
        req.extend_from_slice(f);
    }
    req.extend_from_slice(b"0001");
    req.extend_from_slice(&pkt(&format!("ref-prefix {full_ref}\n")));
    req.extend_from_slice(b"0000");
    write(&mut tx, &req).await?;
    let mut tip = None;
    loop {
        match read_pkt(&mut rx).await? {
            Pkt::Flush => break,
            Pkt::Data(b) => {
                let l = text(&b);
                let mut it = l.split(' ');
                if let (Some(oid), Some(name)) = (it.next(), it.next()) {
                    if name == full_ref && is_oid(oid) {
                        tip = Some(oid.to_string());
                    }
                }
            }
            _ => return Err("unexpected delimiter in the ls-refs answer".into()),
        }
    }
    let tip = tip.ok_or_else(|| format!("{NO_REF}{full_ref}"))?;
    // Each lookup of a missing commit reads every pack index: only the ones not known already.
    let mut wants = Vec::new();
    match sha {
        Some(s) if s == tip => wants.push(tip.clone()),
        Some(s) => {
            wants.push(s.to_string());
            if !super::pack::has_commit(mirror, &tip) {
                wants.push(tip.clone());
            }
        }
        None => {
            if !super::pack::has_commit(mirror, &tip) {
                wants.push(tip.clone());
            }
        }
    }
    if wants.is_empty() {
        write_ref(mirror, full_ref, &tip, limits).map_err(|e| format!("ref update: {e}"))?;
        let _ = write(&mut tx, b"").await;
        return Ok(Fetched {
            tip,
            objects: 0,
            bytes: 0,
        });
    }
    // fetch: every want, the mirror's tips as haves, and `done` (one round, no acknowledgments).
    let mut req = pkt("command=fetch\n");
    if let Some(f) = &format_arg {
        req.extend_from_slice(f);
    }
    req.extend_from_slice(b"0001");
    for a in ["thin-pack\n", "no-progress\n", "ofs-delta\n"] {
        req.extend_from_slice(&pkt(a));
    }
    for w in &wants {
        req.extend_from_slice(&pkt(&format!("want {w}\n")));
    }
    for h in tips(mirror) {
        req.extend_from_slice(&pkt(&format!("have {h}\n")));
    }
    req.extend_from_slice(&pkt("done\n"));
    req.extend_from_slice(b"0000");
    write(&mut tx, &req).await?;
    drop(tx);
    // Sections until `packfile`, then side-band-64k: 1 pack data, 2 progress, 3 error.
    loop {
        match read_pkt(&mut rx).await? {
            Pkt::Data(b) if text(&b) == "packfile" => break,
            Pkt::Data(_) | Pkt::Delim => {}
            Pkt::Flush | Pkt::End => return Err("the answer has no packfile section".into()),
        }
    }
    let mut ip = git::command(mirror, limits);
    ip.args(["index-pack", "--stdin", "--fix-thin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let child = index.insert(
        ip.spawn()
            .map_err(|e| format!("cannot run git index-pack: {e}"))?,
    );
    let mut pack_in = child.stdin.take().ok_or("no stdin")?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let feed = async {
        loop {
            match read_pkt(&mut rx).await? {
                Pkt::Data(b) => match b.first() {
                    Some(1) => pack_in
                        .write_all(&b[1..])
                        .await
                        .map_err(|e| format!("index-pack stopped reading: {e}"))?,
                    Some(2) => {}
                    Some(3) => {
                        return Err(format!(
                            "upload-pack: {}",
                            String::from_utf8_lossy(&b[1..]).trim_end()
                        ))
                    }
                    _ => return Err("a pack line without a side band".into()),
                },
                Pkt::Flush | Pkt::End => break,
                Pkt::Delim => return Err("unexpected delimiter in the pack".into()),
            }
        }
        drop(pack_in);
        Ok::<(), String>(())
    };
    let (fed, _, _) = tokio::join!(feed, out.read_to_end(&mut o), err.read_to_end(&mut e));
    let st = child.wait().await.map_err(|e| format!("index-pack: {e}"))?;
    fed?;
    if !st.success() {
        return Err(format!(
            "git index-pack failed: {}",
            String::from_utf8_lossy(&e).trim()
        ));
    }
    // index-pack names the pack it wrote (`pack\t<hash>`): the wanted commits must be in it.
    let hash = String::from_utf8_lossy(&o)
        .lines()
        .find_map(|l| l.strip_prefix("pack\t").map(str::to_string))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()) && !h.is_empty())
        .ok_or("index-pack named no pack")?;
    let idx = mirror.join(format!("objects/pack/pack-{hash}.idx"));
    for w in &wants {
        let want = hex::decode(w).map_err(|e| e.to_string())?;
        if super::pack::idx_contains(&idx, &want) != Some(true) {
            return Err(format!("the pack lacks {w}"));
        }
    }
    let objects = super::pack::idx_count(&idx).unwrap_or(0);
    let bytes = std::fs::metadata(idx.with_extension("pack"))
        .map(|m| m.len())
        .unwrap_or(0);
    write_ref(mirror, full_ref, &tip, limits).map_err(|e| format!("ref update: {e}"))?;
    Ok(Fetched {
        tip,
        objects,
        bytes,
    })
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> Result<(), String> {
    w.write_all(b)
        .await
        .map_err(|e| format!("upload-pack stopped reading: {e}"))?;
    w.flush()
        .await
        .map_err(|e| format!("upload-pack stopped reading: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ref_names_are_written_by_hand() {
        for ok in [
            "refs/heads/main",
            "refs/heads/feature/x-1",
            "refs/tags/v1.2.3",
            "refs/pull/7/head",
        ] {
            assert!(plain_ref(ok), "{ok}");
        }
        for bad in [
            "main",
            "refs/",
            "refs/heads/../../config",
            "refs/heads/a..b",
            "refs/heads/.hidden",
            "refs/heads/x.lock",
            "refs/heads//x",
            "refs/heads/x/",
            "refs/heads/sp ace",
            "refs/heads/ü",
            "refs/heads/a\\b",
            "refs/heads/a:b",
        ] {
            assert!(!plain_ref(bad), "{bad}");
        }
    }

    #[test]
    fn only_local_file_urls_take_this_path() {
        assert_eq!(local_source("file:///tmp/r"), Some(PathBuf::from("/tmp/r")));
        assert_eq!(local_source("file://host/tmp/r"), None);
        assert_eq!(local_source("https://gitea.local/o/r.git"), None);
        assert_eq!(local_source("/tmp/r"), None);
    }

    #[test]
    fn pkt_lines_are_length_prefixed() {
        assert_eq!(pkt("done\n"), b"0009done\n".to_vec());
    }
}
