//! One source for every documented contract (issue 19 §4): the docs are rendered from, or checked
//! against, the code's own definitions, and a test fails when they differ.
//!
//! - `docs/configuration.md`'s table of environment variables is rendered from the clap definitions of
//!   the three binaries (`DispatcherConfig`, `AgentConfig`, raibid-top's `Config`: variable, default,
//!   `--help` text) and `raibid_core::contract::env` (every name, and the meaning of the variables no
//!   clap argument reads); "used by" is where the code (and `scripts/`) reads the variable.
//! - `docs/openapi.json` is the OpenAPI document `GET /api/v1/openapi.json` serves, built from the
//!   request and response types; every route the router serves is in it, and `docs/api.md` lists the
//!   same endpoints.
//!
//! After a change on purpose, rewrite the generated parts with one command and commit them:
//!
//! ```sh
//! RAIBID_UPDATE_DOCS=1 cargo test -p raibid-dispatcher --test docs
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::CommandFactory;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn update() -> bool {
    std::env::var_os("RAIBID_UPDATE_DOCS").is_some()
}

const BEGIN: &str = "<!-- BEGIN GENERATED: environment variables. Do not edit: RAIBID_UPDATE_DOCS=1 cargo test -p raibid-dispatcher --test docs -->";
const END: &str = "<!-- END GENERATED: environment variables -->";

/// One clap argument that reads an environment variable.
struct Arg {
    binary: &'static str,
    default: Option<String>,
    help: String,
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn clap_args() -> BTreeMap<String, Vec<Arg>> {
    let mut out: BTreeMap<String, Vec<Arg>> = BTreeMap::new();
    for (binary, cmd) in [
        ("dispatcher", raibid_dispatcher::DispatcherConfig::command()),
        ("agent", raibid_agent::AgentConfig::command()),
        ("raibid-top", raibid_top::Config::command()),
    ] {
        for a in cmd.get_arguments() {
            let Some(env) = a.get_env() else { continue };
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            let help = a
                .get_long_help()
                .or(a.get_help())
                .map(|h| one_line(&h.to_string()))
                .unwrap_or_default();
            out.entry(env.to_string_lossy().into_owned())
                .or_default()
                .push(Arg {
                    binary,
                    default: (!defaults.is_empty()).then(|| defaults.join(",")),
                    help,
                });
        }
    }
    out
}

/// `contract::env`: (const name, value, doc comment), in definition order.
fn contract_env() -> Vec<(String, String, String)> {
    let src = std::fs::read_to_string(root().join("rust/raibid-core/src/contract.rs")).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    let mut doc = String::new();
    for line in src.lines() {
        let t = line.trim();
        if t == "pub mod env {" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if t == "}" {
            break;
        }
        if let Some(d) = t.strip_prefix("///") {
            doc.push(' ');
            doc.push_str(d.trim());
        } else if let Some(rest) = t.strip_prefix("pub const ") {
            let (name, value) = rest.split_once(": &str = ").expect("const form");
            out.push((
                name.to_string(),
                value.trim_end_matches(';').trim_matches('"').to_string(),
                one_line(&doc),
            ));
            doc.clear();
        } else {
            doc.clear();
        }
    }
    assert!(out.len() > 20, "contract::env not found");
    out
}

fn rust_sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
}

fn text_files(dir: &Path, exts: &[&str], out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            text_files(&p, exts, out);
        } else if p.extension().is_some_and(|x| exts.iter().any(|e| x == *e))
            || p.file_name()
                .is_some_and(|n| n == "dev.sh" || n == "raibid")
        {
            out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
}

/// Who reads `const` (by its name in Rust sources, by its value in the scripts).
fn used_by(name: &str, value: &str, clap: &[&'static str]) -> Vec<String> {
    let mut users: Vec<String> = clap.iter().map(|s| s.to_string()).collect();
    for (who, dir) in [
        ("dispatcher", "rust/raibid-dispatcher/src"),
        ("agent", "rust/raibid-agent/src"),
        ("raibid-top", "rust/raibid-top/src"),
    ] {
        let mut src = String::new();
        rust_sources(&root().join(dir), &mut src);
        let reads = src.contains(&format!("env::{name}"))
            || src.contains(&format!("env::{name},"))
            || src.contains(&format!("\"{value}\""));
        if reads && !users.iter().any(|u| u == who) {
            users.push(who.to_string());
        }
    }
    let mut scripts = String::new();
    text_files(&root().join("scripts"), &["nu", "sh"], &mut scripts);
    if scripts.contains(value) {
        users.push("scripts".into());
    }
    users
}

/// The table, rendered from the code.
fn env_table() -> String {
    let clap = clap_args();
    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (name, value, doc) in contract_env() {
        let args = clap.get(&value).map(Vec::as_slice).unwrap_or(&[]);
        let binaries: Vec<&'static str> = args.iter().map(|a| a.binary).collect();
        let shown = if name.ends_with("_PREFIX") {
            format!("`{value}<NAME>`")
        } else {
            format!("`{value}`")
        };
        let mut users = used_by(&name, &value, &binaries);
        if users.is_empty() {
            users.push("—".into());
        }
        // One default per variable, or each binary's own when they differ.
        let mut defaults: Vec<(&str, String)> = Vec::new();
        for a in args {
            let d = a
                .default
                .clone()
                .map(|d| {
                    if d.is_empty() {
                        "empty".to_string()
                    } else {
                        format!("`{d}`")
                    }
                })
                .unwrap_or_else(|| "—".into());
            defaults.push((a.binary, d));
        }
        let default = if defaults.is_empty() {
            "—".to_string()
        } else if defaults.iter().all(|(_, d)| *d == defaults[0].1) {
            defaults[0].1.clone()
        } else {
            defaults
                .iter()
                .map(|(b, d)| format!("{b}: {d}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let meaning = args
            .iter()
            .map(|a| a.help.clone())
            .find(|h| !h.is_empty())
            .unwrap_or(doc);
        rows.push(format!(
            "| {shown} | {} | {default} | {meaning} |",
            users.join(", ")
        ));
        seen.insert(value);
    }
    // A variable a binary reads that the contract does not define is a second definition.
    let stray: Vec<&String> = clap.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        stray.is_empty(),
        "environment variables read by clap but not defined in raibid_core::contract::env: {stray:?}"
    );
    let mut t = String::from("| variable | used by | default | meaning |\n|---|---|---|---|\n");
    for r in rows {
        t.push_str(&r);
        t.push('\n');
    }
    t
}

/// Replace what is between the markers of `path` with `body` (RAIBID_UPDATE_DOCS) or check it.
fn generated_section(path: &Path, body: &str) {
    let page = std::fs::read_to_string(path).unwrap();
    let (Some(b), Some(e)) = (page.find(BEGIN), page.find(END)) else {
        panic!(
            "{}: the markers {BEGIN} … {END} are missing",
            path.display()
        );
    };
    let current = &page[b + BEGIN.len()..e];
    let want = format!("\n{body}");
    if update() {
        let new = format!("{}{BEGIN}{want}{}", &page[..b], &page[e..]);
        std::fs::write(path, new).unwrap();
        return;
    }
    if current != want {
        let cur: Vec<&str> = current.lines().collect();
        let new: Vec<&str> = want.lines().collect();
        let diff: Vec<String> = new
            .iter()
            .filter(|l| !cur.contains(l))
            .map(|l| format!("+ {l}"))
            .chain(
                cur.iter()
                    .filter(|l| !new.contains(l))
                    .map(|l| format!("- {l}")),
            )
            .take(20)
            .collect();
        panic!(
            "{} differs from the code's definitions; rerun with RAIBID_UPDATE_DOCS=1 and commit it:\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}

#[test]
fn the_configuration_table_is_rendered_from_the_code() {
    let table = env_table();
    // Each variable once (issue 19 §4: four of them were listed twice with conflicting values).
    let mut names: Vec<&str> = table
        .lines()
        .skip(2)
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "a variable is listed twice");
    generated_section(&root().join("docs/configuration.md"), &table);
}

#[test]
fn the_table_names_the_codes_defaults() {
    // The values the issue found conflicting, from clap itself: the rendered table has these.
    let table = env_table();
    let row = |v: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| `{v}` |")))
            .unwrap_or_else(|| panic!("{v} missing"))
            .to_string()
    };
    assert!(row("RAIBID_LOG_CAP_LINES").contains("| `200000` |"));
    assert!(row("RAIBID_LOG_CAP_BYTES").contains("| `10485760` |"));
    assert!(row("RAIBID_AGENT_NAME").contains("agent"));
}
