//! The `patch` step: a job submitted with an uncommitted change (a unified diff, `git diff` output) gets
//! it applied with `git apply` right after the clone. The diff comes from `raibid:job:{id}:patch`, is
//! checked against the digest in the job record, written to a file inside the workspace's `.git`
//! directory (not in the working tree) and handed to git as an argv path — never through a shell.
//! A patch that does not apply fails the job naming the file and the hunk.

use crate::ctx::JobCtx;
use crate::git;
use crate::stop::LOST;
use chrono::Utc;
use raibid_core::contract;
use raibid_core::job::Status;
use sha2::{Digest, Sha256};
use std::path::Path;

/// One hunk of a unified diff: the file it changes and its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// Path of the file (the `b/` side, or `a/` for a deletion).
    pub file: String,
    /// 1-based number of the hunk within its file.
    pub number: usize,
    /// First line of the old side (`@@ -N,...`).
    pub old_start: u32,
    /// The `@@ ... @@` header line.
    pub header: String,
}

/// The hunks of a unified diff, in order.
pub fn hunks(diff: &str) -> Vec<Hunk> {
    let mut out = Vec::new();
    let mut file = String::new();
    let mut n = 0;
    for l in diff.lines() {
        if let Some(rest) = l.strip_prefix("+++ ") {
            let p = rest.trim();
            if p != "/dev/null" {
                file = p.strip_prefix("b/").unwrap_or(p).to_string();
            }
            n = 0;
        } else if let Some(rest) = l.strip_prefix("--- ") {
            let p = rest.trim();
            if p != "/dev/null" {
                file = p.strip_prefix("a/").unwrap_or(p).to_string();
            }
        } else if l.starts_with("@@ ") {
            n += 1;
            let old_start = l
                .strip_prefix("@@ -")
                .and_then(|r| r.split([',', ' ']).next())
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            out.push(Hunk {
                file: file.clone(),
                number: n,
                old_start,
                header: l
                    .split(" @@")
                    .next()
                    .map(|h| format!("{h} @@"))
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// Turn `git apply`'s complaint into a sentence naming the file and the hunk.
pub fn explain_failure(diff: &str, git_lines: &[String]) -> String {
    let hs = hunks(diff);
    for l in git_lines {
        // `error: patch failed: src/lib.rs:12`
        if let Some(loc) = l.strip_prefix("error: patch failed: ") {
            if let Some((file, line)) = loc.trim().rsplit_once(':') {
                let line: u32 = line.parse().unwrap_or(0);
                let hunk = hs
                    .iter()
                    .filter(|h| h.file == file)
                    .find(|h| h.old_start == line)
                    .or_else(|| hs.iter().find(|h| h.file == file));
                return match hunk {
                    Some(h) => format!(
                        "patch does not apply: {file} hunk #{} `{}` (at line {line}) does not match the checked-out commit",
                        h.number, h.header
                    ),
                    None => format!("patch does not apply: {file} at line {line}"),
                };
            }
        }
    }
    for l in git_lines {
        if let Some(rest) = l.strip_prefix("error: ") {
            // `error: src/x.rs: No such file or directory`, `error: corrupt patch at line 7`, ...
            return format!("patch does not apply: {rest}");
        }
    }
    "patch does not apply (git apply gave no reason)".into()
}

/// Run the patch step when the job carries a patch. `None`: continue with the pipeline; `Some`: the
/// job ends here with that outcome (`LOST` when the lease was lost).
pub(crate) async fn apply_step(
    ctx: &mut JobCtx<'_>,
    ws: &Path,
) -> Option<(Status, Option<String>)> {
    let want = ctx.claim.job.source.patch.clone()?;
    ctx.claim.job.begin_step("patch", Utc::now());
    if !ctx.update("step_started").await {
        return Some((LOST, None));
    }
    let result = apply(ctx, ws, &want).await;
    let ok = result.is_ok();
    match &result {
        Ok(n) => {
            ctx.sys("patch", format!("[raibid] patch applied ({n} hunk(s))"))
                .await
        }
        Err(e) => ctx.sys("patch", format!("[raibid] {e}")).await,
    }
    ctx.claim
        .job
        .end_step(if ok { "succeeded" } else { "failed" }, None, Utc::now());
    if !ctx.update("step_finished").await {
        return Some((LOST, None));
    }
    match result {
        Ok(_) => None,
        Err(e) => Some((Status::Failed, Some(format!("patch: {e}")))),
    }
}

async fn apply(
    ctx: &mut JobCtx<'_>,
    ws: &Path,
    want: &raibid_core::job::PatchRef,
) -> Result<usize, String> {
    let mut con = ctx.shared.queue.redis();
    let diff: Option<Vec<u8>> = redis::cmd("GET")
        .arg(contract::job_patch_key(&ctx.claim.job.id))
        .query_async(&mut con)
        .await
        .map_err(|e| format!("cannot read the patch: {e}"))?;
    let diff = diff.ok_or("the patch is gone (expired or cleaned up); submit the job again")?;
    let digest = hex::encode(Sha256::digest(&diff));
    if digest != want.sha256 || diff.len() as u64 != want.bytes {
        return Err("the stored patch does not match its digest in the job record".into());
    }
    let text = String::from_utf8_lossy(&diff).into_owned();
    let n = hunks(&text).len();
    // Inside .git: not part of the working tree the pipeline sees.
    // An earlier job's step could have left a symbolic link here: unlink it, then create the file
    // anew, never following a link (`O_EXCL | O_NOFOLLOW`).
    let file = ws.join(".git").join("raibid.patch");
    let _ = std::fs::remove_file(&file);
    crate::cache::gitdir::write_new(&file, &diff)
        .map_err(|e| format!("cannot write the patch file: {e}"))?;
    let path = file.to_string_lossy().into_owned();
    let args = [
        "apply",
        "--verbose",
        "--whitespace=nowarn",
        "--",
        path.as_str(),
    ];
    ctx.sys(
        "patch",
        format!(
            "$ git apply --verbose --whitespace=nowarn -- .git/raibid.patch ({} bytes)",
            diff.len()
        ),
    )
    .await;
    let limits = limits(ctx);
    let out = git::git(ws, &args, &ctx.shared.creds, None, &limits)
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    for l in &out.lines {
        ctx.sys("patch", l.clone()).await;
    }
    let _ = tokio::fs::remove_file(&file).await;
    if out.ok {
        Ok(n)
    } else {
        Err(explain_failure(&text, &out.lines))
    }
}

/// `git apply` writes the step user's checkout: it runs as that user, like the clone.
fn limits(ctx: &JobCtx<'_>) -> git::Limits {
    let deadline = ctx
        .deadline
        .min(std::time::Instant::now() + std::time::Duration::from_secs(120));
    ctx.git_limits(deadline)
}

/// For a clone that failed: when the job's ref does not exist on the remote, say so and name the
/// branches there are (`git ls-remote --heads -- <url>`, argv only).
pub(crate) async fn missing_ref_hint(ctx: &JobCtx<'_>) -> Option<String> {
    let src = &ctx.claim.job.source;
    let dir = std::env::temp_dir();
    let out = git::git(
        &dir,
        &["ls-remote", "--heads", "--tags", "--", &src.repo_url],
        &ctx.shared.creds,
        Some(&src.repo_url),
        &limits(ctx),
    )
    .await
    .ok()
    .filter(|o| o.ok)?;
    let refs: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    if refs.contains(&src.git_ref.as_str()) {
        return None;
    }
    let mut names: Vec<&str> = refs
        .iter()
        .filter_map(|r| r.strip_prefix("refs/heads/"))
        .collect();
    let total = names.len();
    names.truncate(30);
    let more = if total > names.len() {
        format!(" (and {} more)", total - names.len())
    } else {
        String::new()
    };
    Some(format!(
        "ref `{}` not found in {}; branches: {}{more}",
        src.git_ref,
        git::redact_url(&src.repo_url),
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/src/lib.rs b/src/lib.rs\nindex 1..2 100644\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,3 +1,3 @@ fn a()\n-x\n+y\n z\n@@ -10,2 +10,2 @@\n-p\n+q\ndiff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -4 +4 @@\n-old\n+new\n";

    #[test]
    fn hunks_are_numbered_per_file() {
        let h = hunks(DIFF);
        assert_eq!(h.len(), 3);
        assert_eq!(
            (h[1].file.as_str(), h[1].number, h[1].old_start),
            ("src/lib.rs", 2, 10)
        );
        assert_eq!(h[1].header, "@@ -10,2 +10,2 @@");
        assert_eq!((h[2].file.as_str(), h[2].number), ("README.md", 1));
    }

    #[test]
    fn failure_names_file_and_hunk() {
        let lines = vec![
            "Checking patch src/lib.rs...".to_string(),
            "error: while searching for:".to_string(),
            "p".to_string(),
            "error: patch failed: src/lib.rs:10".to_string(),
            "error: src/lib.rs: patch does not apply".to_string(),
        ];
        let m = explain_failure(DIFF, &lines);
        assert!(m.contains("src/lib.rs hunk #2 `@@ -10,2 +10,2 @@`"), "{m}");
        let m = explain_failure(DIFF, &["error: corrupt patch at line 3".to_string()]);
        assert_eq!(m, "patch does not apply: corrupt patch at line 3");
    }
}
