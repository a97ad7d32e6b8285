//! Issue 19 §4: the suites and benches build the dispatcher's test `Settings` in one place. A
//! `Settings { … }` literal in any crate's tests or examples fails here: use `raibid_testkit::settings`
//! and change the fields the test is about (a new `Settings` field is then one change, not seven).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_suite_or_bench_builds_settings_by_hand() {
    let rust = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in [
        "raibid-core",
        "raibid-dispatcher",
        "raibid-agent",
        "raibid-top",
    ] {
        for dir in ["tests", "examples", "benches"] {
            sources(&rust.join(krate).join(dir), &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let literal = regex_lite("Settings {");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            let src = std::fs::read_to_string(f).unwrap_or_default();
            src.lines()
                .any(|l| literal(l) && !l.trim_start().starts_with("//"))
        })
        .map(|f| f.strip_prefix(&rust).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these build raibid_dispatcher::Settings by hand; use raibid_testkit::settings(token) and set the fields the test needs: {offenders:?}"
    );
}

/// `Settings {` as a struct literal (`let s = Settings {`, `raibid_dispatcher::Settings {`), not a type
/// named `…Settings` or a pattern in a comment.
fn regex_lite(needle: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| {
        l.match_indices(needle).any(|(i, _)| {
            let before = l[..i].chars().last();
            before.is_none_or(|c| !c.is_alphanumeric() && c != '_')
                && !l[..i].trim_end().ends_with("struct")
        })
    }
}
