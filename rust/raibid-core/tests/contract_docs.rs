//! The docs agree with the one definition of the contract: every Redis key, environment variable and HTTP
//! path defined in contract.rs is documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn consts(module: &str) -> Vec<(String, String)> {
    let src = include_str!("../src/contract.rs");
    let mut out = Vec::new();
    let mut current = "";
    for line in src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub mod ") {
            current = rest.trim_end_matches(" {").trim();
        } else if let Some(rest) = t.strip_prefix("pub const ") {
            if current == module {
                let (name, value) = rest.split_once(": &str = ").expect("const form");
                out.push((
                    name.to_string(),
                    value.trim_end_matches(';').trim_matches('"').to_string(),
                ));
            }
        }
    }
    assert!(!out.is_empty(), "no consts in module {module}");
    out
}

fn doc(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_redis_key_is_in_the_key_layout_table() {
    let page = doc("queue-contract.md");
    for (name, value) in consts("keys") {
        let needle = if name.ends_with("_SUFFIX") {
            format!("{value}`")
        } else {
            format!("`{value}")
        };
        assert!(
            page.contains(&needle),
            "docs/queue-contract.md does not document {name} = {value}"
        );
    }
}

#[test]
fn every_env_var_is_documented() {
    let page = doc("configuration.md");
    for (name, value) in consts("env") {
        let needle = if name.ends_with("_PREFIX") {
            format!("`{value}")
        } else {
            format!("`{value}`")
        };
        assert!(
            page.contains(&needle),
            "docs/configuration.md does not document {name} = {value}"
        );
    }
}

#[test]
fn every_http_path_is_documented() {
    let page = doc("api.md");
    for (name, value) in consts("http") {
        if name == "DEFAULT_PORT" {
            assert!(
                page.contains(&format!("port {value}")),
                "docs/api.md does not name the default port"
            );
        } else {
            assert!(
                page.contains(&value),
                "docs/api.md does not document {name} = {value}"
            );
        }
    }
}

#[test]
fn the_parser_sees_the_stream_and_group_the_keda_trigger_uses() {
    let keys = consts("keys");
    assert!(keys.contains(&("JOBS_STREAM".into(), "raibid:jobs".into())));
    assert!(keys.contains(&("AGENTS_GROUP".into(), "raibid-agents".into())));
}
