//! Issue 17 §3–§5, §7: a hostile build step (what one compromised crate's `build.rs` could run) against
//! the real agent binary, real Redis, real git and the real node cache, in the two configurations the
//! agent runs in:
//!
//! - local mode as `dev.sh up` starts it: the agent runs as root, steps run as the agent's user;
//! - the pods' configuration: agent and steps non-root and of one uid (here 65534, as the pods' 1000),
//!   credentials in the agent's environment, caches shared.
//!
//! The step knows every path of the node cache (the test lists them after another repository's job
//! and writes them into the hostile pipeline) and tries to write each — other repositories' mirrors
//! (a `reference-transaction` hook, `http.proxy` in the config), slots and cargo homes, the Buildah
//! layer store, its own mirror — to read the agent's and git's credentials from `/proc`, and to leave a
//! `setsid` survivor without the job marker. None of it may work; and a later job of the other
//! repository, with a git token and a scoped secret configured, finds nothing planted and leaks
//! nothing.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const REDIS_PASSWORD: &str = "redis-pw-hostile-5b1e";
const GIT_TOKEN: &str = "git-token-hostile-77ac";
const SCOPED: &str = "scoped-secret-hostile-e4d2";

/// Every path under `root` (files and directories), sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Processes on the host with `needle` as one of their arguments (the survivors' `sleep`).
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).into_owned();
            if c.split('\0').any(|a| a == needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn b64(s: &str) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
}

fn indent(script: &str) -> String {
    script.lines().map(|l| format!("      {l}\n")).collect()
}

/// The hostile step: plant in every given directory (a hook and config where it is a git
/// directory, a file elsewhere), overwrite every given file, search `/proc` for the secrets, leave a
/// survivor. Prints `PLANTED <path>` / `LEAK in <where>` for each success, `attempted <n>` at the end.
/// `survivor`: the survivors' `sleep` argument, a number no other process on the machine uses.
fn hostile_step(dirs: &[PathBuf], files: &[PathBuf], survivor: &str) -> String {
    let dirs = dirs
        .iter()
        .map(|d| format!("'{}'", d.display()))
        .collect::<Vec<_>>()
        .join(" ");
    let files = files
        .iter()
        .map(|d| format!("'{}'", d.display()))
        .collect::<Vec<_>>()
        .join(" ");
    indent(&format!(
        r#"n=0
for d in {dirs}; do
  n=$((n+1))
  if [ -f "$d/HEAD" ] && [ -d "$d/objects" ]; then
    mkdir -p "$d/hooks" 2>/dev/null
    if printf '#!/bin/sh\nenv > /tmp/stolen-git-env\n' > "$d/hooks/reference-transaction" 2>/dev/null; then echo "PLANTED $d/hooks/reference-transaction"; fi
    if printf '[http]\n\tproxy = http://127.0.0.1:9\n' >> "$d/config" 2>/dev/null; then echo "PLANTED $d/config"; fi
  elif echo planted > "$d/raibid-planted" 2>/dev/null; then echo "PLANTED $d/raibid-planted"; fi
done
for f in {files}; do
  n=$((n+1))
  if [ -e "$f" ] && echo trojan >> "$f" 2>/dev/null; then echo "PLANTED $f"; fi
done
for p in {pw} {tok}; do
  echo "$p" | base64 -d > pat
  for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
    if tr '\0' '\n' < "$f" 2>/dev/null | grep -qF -f pat; then echo "LEAK in $f"; fi
  done
done
setsid env -u RAIBID_JOB_ID sh -c 'sleep {survivor}' > /dev/null 2>&1 < /dev/null &
( setsid nohup env -i sleep {survivor} > /dev/null 2>&1 < /dev/null & )
echo "attempted $n"
"#,
        pw = b64(REDIS_PASSWORD),
        tok = b64(GIT_TOKEN),
    ))
}

/// The other repository's step: search for the credentials and its scoped secret (as `LEAK in`), and
/// look at what the hostile job could have planted in its checkout and mirror.
fn victim_step() -> String {
    indent(&format!(
        r#"for p in {pw} {tok}; do
  echo "$p" | base64 -d > /tmp/pat
  for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
    if tr '\0' '\n' < "$f" 2>/dev/null | grep -qF -f /tmp/pat; then echo "LEAK in $f"; fi
  done
done
test "$SCOPED_ONE" = "$(echo {scoped} | base64 -d)" && echo scoped-secret-present
ls -a .git/hooks 2>/dev/null | grep -v '^\.' | grep -v '\.sample$' | sed 's/^/PLANTED hook /'
test -e raibid-planted && echo "PLANTED in the checkout"
echo victim-done
"#,
        pw = b64(REDIS_PASSWORD),
        tok = b64(GIT_TOKEN),
        scoped = b64(SCOPED),
    ))
}

async fn hostile_step_reaches_nothing(uid: Option<u32>) {
    // One per test: the two run at once.
    let survivor = if uid.is_some() {
        "297.4243"
    } else {
        "297.4241"
    };
    use std::os::unix::process::CommandExt;
    let e = env(Some(REDIS_PASSWORD)).await;
    let tmp = e.tmp.path();
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = make_repo(
        &tmp.join("victim"),
        &format!(
            "secrets: [SCOPED_ONE]\nsteps:\n  - name: look\n    run: |\n{}",
            victim_step()
        ),
    );
    let mut extra = vec![
        ("RAIBID_GIT_TOKEN", GIT_TOKEN.to_string()),
        ("RAIBID_GIT_USERNAME", "raibid".to_string()),
        ("RAIBID_ALLOWED_HOSTS", "gitea.test".to_string()),
        ("RAIBID_SECRET_SCOPED_ONE", SCOPED.to_string()),
        ("RAIBID_SECRET_SCOPES", format!("SCOPED_ONE={victim}")),
    ];
    let mut cmd = if let Some(uid) = uid {
        for d in ["ws", "cache", "home"] {
            let p = tmp.join(d);
            std::fs::create_dir(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        extra.push(("HOME", tmp.join("home").display().to_string()));
        let bin_dir = tmp.join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        let bin = agent_binary_in(&bin_dir);
        let c = e.agent_cmd("hostile-agent", &extra);
        let mut pod = same_command_from(&bin, &c, &e.log_path("hostile-agent"));
        pod.uid(uid).gid(uid);
        pod
    } else {
        e.agent_cmd("hostile-agent", &extra)
    };
    if uid.is_some() {
        // git refuses repositories another user owns (safe.directory); the pods clone over HTTP.
        let st = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(tmp.join("victim"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    cmd.arg("--concurrency").arg("1");
    e.start(cmd);
    wait_log(
        &e.log_path("hostile-agent"),
        "agent started",
        Duration::from_secs(20),
    );
    // 1. The other repository builds first: its mirror, slot and cargo home exist on the node. So does
    // a Buildah layer store (image jobs' storage under the same cache root, as one local agent serves
    // both kinds).
    let first = e.submit(&victim).await;
    let j = e.wait_final(&first, Duration::from_secs(60)).await;
    let log = lines(&e, &first).await;
    assert_eq!(
        j.status.as_str(),
        "succeeded",
        "{log}\n{}",
        e.agent_log("hostile-agent")
    );
    let cache = tmp.join("cache");
    let layer = cache.join("buildah/storage/vfs/dir/0123abcd/usr/bin/app");
    std::fs::create_dir_all(layer.parent().unwrap()).unwrap();
    std::fs::write(&layer, "the published layer\n").unwrap();
    if let Some(uid) = uid {
        let st = std::process::Command::new("chown")
            .args(["-R", &format!("{uid}:{uid}")])
            .arg(cache.join("buildah"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let before = tree(&cache);
    let dirs: Vec<PathBuf> = before.iter().filter(|p| p.is_dir()).cloned().collect();
    let files: Vec<PathBuf> = before
        .iter()
        .filter(|p| p.is_file() && !p.to_string_lossy().contains("/objects/pack/"))
        .cloned()
        .collect();
    assert!(
        dirs.iter()
            .any(|d| d.extension().is_some_and(|x| x == "git")),
        "the victim's mirror exists: {dirs:?}"
    );
    // 2. The hostile repository's job tries everything.
    let evil = make_repo(
        &tmp.join("evil"),
        &format!(
            "steps:\n  - name: attack\n    run: |\n{}",
            hostile_step(&dirs, &files, survivor)
        ),
    );
    if uid.is_some() {
        let st = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(tmp.join("evil"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let bad = e.submit(&evil).await;
    let j = e.wait_final(&bad, Duration::from_secs(60)).await;
    let log = lines(&e, &bad).await;
    assert_eq!(j.status.as_str(), "succeeded", "{log}");
    assert!(
        log.contains(&format!("attempted {}", dirs.len() + files.len())),
        "the attack ran over every path: {log}"
    );
    // A write the step saw succeed counts if it reached the host's file: under a temporary directory
    // (as here) the sandbox's private /tmp holds the mount points of the paths it shows, so a write
    // beside them lands in that private tmpfs and is gone with the sandbox.
    let hits: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.starts_with("LEAK")
                || l.strip_prefix("PLANTED ").is_some_and(|p| {
                    std::fs::read_to_string(p).is_ok_and(|c| {
                        c.contains("planted")
                            || c.contains("trojan")
                            || c.contains("stolen-git-env")
                            || c.contains("127.0.0.1:9")
                    })
                })
        })
        .collect();
    assert!(hits.is_empty(), "the hostile step reached: {hits:#?}");
    // Nothing of it outlives its job (whatever setsid and a scrubbed environment did).
    let survivors = processes_with(survivor);
    assert!(survivors.is_empty(), "survivors: {survivors:?}");
    // The node's files are as they were (the victim's mirror, slot, cargo home, the layer store).
    assert_eq!(
        std::fs::read_to_string(&layer).unwrap(),
        "the published layer\n"
    );
    let planted: Vec<PathBuf> = tree(&cache)
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with("raibid-planted") || s.ends_with("hooks/reference-transaction")
        })
        .collect();
    assert!(planted.is_empty(), "planted on the node: {planted:?}");
    // 3. The other repository's next job: nothing planted, nothing leaked, its secret there.
    let second = e.submit(&victim).await;
    let j = e.wait_final(&second, Duration::from_secs(60)).await;
    let log = lines(&e, &second).await;
    assert_eq!(j.status.as_str(), "succeeded", "{log}");
    assert!(
        log.contains("victim-done") && log.contains("scoped-secret-present"),
        "{log}"
    );
    let hits: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("PLANTED") || l.starts_with("LEAK"))
        .collect();
    assert!(hits.is_empty(), "the later job found: {hits:#?}");
    assert!(!Path::new("/tmp/stolen-git-env").exists());
}

async fn lines(e: &Env, id: &str) -> String {
    e.logs(id)
        .await
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Local mode as `dev.sh up` starts it: the agent as root (this suite runs as root), steps as its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mode_a_hostile_step_reaches_no_cache_credential_or_later_job() {
    assert!(
        nix_is_root(),
        "this suite runs as root (as CI does): local mode's agent is root here"
    );
    hostile_step_reaches_nothing(None).await;
}

/// The pods' configuration: agent and steps non-root, one uid, caches shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_configuration_a_hostile_step_reaches_no_cache_credential_or_later_job() {
    assert!(nix_is_root(), "starting the agent as uid 65534 needs root");
    hostile_step_reaches_nothing(Some(65534)).await;
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Defence in depth (issue 17 §3): a mirror whose hooks or config were changed on the node (by
/// anything but the agent) is rebuilt before the agent's git runs there, and the planted hook and
/// proxy never take effect; a checkout's `.git` config planted between jobs is reset the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirror_or_checkout_tampered_on_the_node_is_rebuilt_and_its_hook_never_runs() {
    let e = env(None).await;
    let tmp = e.tmp.path();
    let repo = make_repo(
        &tmp.join("repo"),
        "steps:\n  - name: ok\n    run: echo fine\n",
    );
    e.agent("tamper-agent", &[]);
    wait_log(
        &e.log_path("tamper-agent"),
        "agent started",
        Duration::from_secs(20),
    );
    let first = e.submit(&repo).await;
    assert_eq!(
        e.wait_final(&first, Duration::from_secs(60))
            .await
            .status
            .as_str(),
        "succeeded"
    );
    let git_dir = tmp.join("cache/git");
    let mirror = std::fs::read_dir(&git_dir)
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .find(|p| p.extension().is_some_and(|x| x == "git"))
        .expect("the mirror");
    let ran = tmp.join("hook-ran");
    for hook in ["reference-transaction", "post-checkout", "pre-auto-gc"] {
        let h = mirror.join("hooks").join(hook);
        std::fs::write(&h, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cfg = std::fs::read_to_string(mirror.join("config")).unwrap();
    cfg.push_str("[core]\n\tfsmonitor = touch-fsmonitor\n");
    std::fs::write(mirror.join("config"), cfg).unwrap();
    // The checkout's .git too: a fsmonitor command and a post-checkout hook.
    let slot_git = tree(&tmp.join("cache/targets"))
        .into_iter()
        .find(|p| p.ends_with("src/.git"))
        .expect("the checkout's .git");
    std::fs::write(
        slot_git.join("config"),
        format!("[core]\n\tfsmonitor = touch {}\n", ran.display()),
    )
    .unwrap();
    std::fs::create_dir_all(slot_git.join("hooks")).unwrap();
    let h = slot_git.join("hooks/post-checkout");
    std::fs::write(&h, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
    std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).unwrap();
    let second = e.submit(&repo).await;
    let j = e.wait_final(&second, Duration::from_secs(60)).await;
    let log = lines(&e, &second).await;
    assert_eq!(j.status.as_str(), "succeeded", "{log}");
    assert!(log.contains("rebuilding the mirror"), "{log}");
    assert!(
        !ran.exists(),
        "a planted hook or fsmonitor ran as the agent: {log}"
    );
    let cfg = std::fs::read_to_string(mirror.join("config")).unwrap();
    assert!(!cfg.contains("fsmonitor"), "{cfg}");
    assert!(!std::fs::read_to_string(slot_git.join("config"))
        .unwrap()
        .contains("fsmonitor"));
}
