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

mod support;

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

// ---- the HTTP API ----------------------------------------------------------------------------

fn openapi_text() -> String {
    serde_json::to_string_pretty(&raibid_dispatcher::openapi::document()).unwrap() + "\n"
}

/// The checked-in `docs/openapi.json` is the document the code builds (as the MCP tool schemas are
/// snapshotted): a change to a request or response type, or an endpoint added, shows as a diff.
#[test]
fn the_checked_in_openapi_document_is_the_codes() {
    let path = root().join("docs/openapi.json");
    let got = openapi_text();
    if update() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == got,
        "docs/openapi.json differs from the API's types and endpoints; rerun with RAIBID_UPDATE_DOCS=1 cargo test -p raibid-dispatcher --test docs and commit it"
    );
}

/// (method, path) of every operation in the document.
fn documented() -> std::collections::BTreeSet<(String, String)> {
    let doc = raibid_dispatcher::openapi::document();
    let mut out = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    out
}

/// `raibid_core::contract::http` consts, by name.
fn http_consts() -> BTreeMap<String, String> {
    let src = std::fs::read_to_string(root().join("rust/raibid-core/src/contract.rs")).unwrap();
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in src.lines() {
        let t = line.trim();
        if t == "pub mod http {" {
            inside = true;
        } else if inside && t == "}" {
            break;
        } else if inside {
            if let Some(rest) = t.strip_prefix("pub const ") {
                if let Some((name, value)) = rest.split_once(": &str = ") {
                    out.insert(
                        name.to_string(),
                        value.trim_end_matches(';').trim_matches('"').to_string(),
                    );
                }
            }
        }
    }
    out
}

/// Every `.route(…)` / `.route_service(…)` of the dispatcher's sources: (file, path, methods). A path
/// expression this does not know fails the test, naming it: teach `resolve` (and document the route).
fn routes_in_source() -> Vec<(String, String, Vec<String>)> {
    let consts = http_consts();
    let resolve = |expr: &str, file: &str| -> String {
        let e = expr.trim();
        if let Some(lit) = e.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            return lit.to_string();
        }
        let inner = e
            .strip_prefix("rel(")
            .and_then(|x| x.strip_suffix(')'))
            .unwrap_or(e);
        if let Some(name) = inner.strip_prefix("http::") {
            if let Some(v) = consts.get(name) {
                return v.clone();
            }
        }
        // schedules.rs: `rel` is SCHEDULES_PATH relative to the API prefix, `format!("{rel}/…")` below it.
        let schedules = consts.get("SCHEDULES_PATH").cloned().unwrap_or_default();
        if file == "schedules.rs" {
            if e == "rel" {
                return schedules;
            }
            if let Some(rest) = e
                .strip_prefix("&format!(\"{rel}")
                .and_then(|x| x.strip_suffix("\")"))
            {
                return format!("{schedules}{}", rest.replace("{{", "{").replace("}}", "}"));
            }
        }
        match e {
            "&crate::public::route_path()" => raibid_dispatcher::public::route_path(),
            "&crate::public::artifact_route_path()" => {
                raibid_dispatcher::public::artifact_route_path()
            }
            _ => panic!(
                "{file}: route path `{e}` is not a string literal or a contract::http const; use one, or teach tests/docs.rs `resolve` about it"
            ),
        }
    };
    let mut out = Vec::new();
    let mut files = Vec::new();
    fn walk(d: &Path, files: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, files);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    walk(&root().join("rust/raibid-dispatcher/src"), &mut files);
    let method_re = regex::Regex::new(r"\b(get|post|put|patch|delete)\(").unwrap();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for (at, kw) in [".route(", ".route_service("]
            .iter()
            .flat_map(|kw| src.match_indices(kw).map(move |(i, _)| (i, *kw)))
        {
            // The call's text up to its closing parenthesis.
            let start = at + kw.len();
            let mut depth = 1;
            let mut end = start;
            for (i, c) in src[start..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = start + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &src[start..end];
            // The first argument: up to the first comma outside parentheses.
            let mut d = 0;
            let mut cut = call.len();
            for (i, c) in call.char_indices() {
                match c {
                    '(' => d += 1,
                    ')' => d -= 1,
                    ',' if d == 0 => {
                        cut = i;
                        break;
                    }
                    _ => {}
                }
            }
            // axum's catch-all `{*name}` is OpenAPI's `{name}` (a path with slashes).
            let path = resolve(&call[..cut], &name).replace("{*", "{");
            let methods: Vec<String> = if kw == ".route_service(" {
                Vec::new()
            } else {
                method_re
                    .captures_iter(&call[cut..])
                    .map(|c| c[1].to_ascii_uppercase())
                    .collect()
            };
            out.push((name.clone(), path, methods));
        }
    }
    assert!(out.len() >= 10, "found only {} routes", out.len());
    out
}

/// Adding an endpoint without describing it fails here: every route in the router's sources is an
/// operation of the OpenAPI document (paths of the API router are relative to `/api/v1`).
#[test]
fn every_route_the_router_serves_is_in_the_openapi_document() {
    let doc = documented();
    let prefix = raibid_core::contract::http::API_PREFIX;
    let mut missing = Vec::new();
    for (file, path, methods) in routes_in_source() {
        let full = if doc.iter().any(|(_, p)| *p == path) {
            path.clone()
        } else {
            format!("{prefix}{path}")
        };
        let known: Vec<&String> = doc
            .iter()
            .filter(|(_, p)| *p == full)
            .map(|(m, _)| m)
            .collect();
        if known.is_empty() {
            missing.push(format!("{file}: {path} (any method)"));
        }
        for m in methods {
            if !known.contains(&&m) {
                missing.push(format!("{file}: {m} {full}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes the dispatcher serves that rust/raibid-dispatcher/src/openapi.rs `endpoints` does not describe (add them there and to docs/api.md):\n{}",
        missing.join("\n")
    );
}

/// And the other way round, against the running dispatcher: every documented operation is served (no
/// 404 "no such route", no 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_the_document_is_served_too() {
    let env = support::spawn_app(support::Options::default()).await;
    let (status, served) = env.api_get(&raibid_dispatcher::openapi::path()).await;
    assert_eq!(status, 200);
    assert_eq!(served, raibid_dispatcher::openapi::document());
    let id = "01JD0000000000000000000000";
    for (method, path) in documented() {
        let url = env.url(&path.replace("{id}", id).replace("{token}", &"0".repeat(32)));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = env
            .http
            .request(m, &url)
            .bearer_auth(support::TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // Event streams never end: the status line is enough.
        let body = if r
            .headers()
            .get("content-type")
            .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"))
        {
            String::new()
        } else {
            r.text().await.unwrap_or_default()
        };
        assert_ne!(status, 405, "{method} {path}: not served ({body})");
        assert!(
            !(status == 404 && (body.is_empty() || body.contains("no such API route"))),
            "{method} {path}: not served ({status} {body})"
        );
    }
}

/// `docs/api.md` lists exactly the endpoints of the document, each once (it listed `POST` and `GET
/// /api/v1/jobs` twice, with different fields).
#[test]
fn api_md_lists_the_documented_endpoints_once() {
    let page = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    let re =
        regex::Regex::new(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^` ?]*)(\?[^`]*)?` \|").unwrap();
    let mut listed = Vec::new();
    for line in page.lines() {
        if let Some(c) = re.captures(line) {
            if c.get(3).is_none() {
                listed.push((c[1].to_string(), c[2].to_string()));
            }
        }
    }
    let mut dup = listed.clone();
    dup.sort();
    let n = dup.len();
    dup.dedup();
    assert_eq!(
        dup.len(),
        n,
        "docs/api.md lists an endpoint twice: {listed:?}"
    );
    let listed: std::collections::BTreeSet<(String, String)> = listed.into_iter().collect();
    let doc = documented();
    let undocumented: Vec<_> = doc.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&doc).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/api.md and the OpenAPI document differ: not in api.md {undocumented:?}; not served {unknown:?}"
    );
}
