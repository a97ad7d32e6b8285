//! The tool list as published: the schemas rmcp derives (schemars) from the handlers' types, made
//! portable — only JSON Schema's standard `format`s (schemars' `uint32`, `uint64`, `int32`, `double`
//! are not: validators warn about each; integer ranges are already `minimum`s), and `submit_job.image`
//! given its schema (the REST type keeps it as free JSON and validates it in code), and
//! `submit_job.repo_url` naming the URL schemes this dispatcher accepts.

use rmcp::model::{JsonObject, Tool};
use serde_json::{json, Value};
use std::sync::Arc;

/// The formats JSON Schema 2020-12 defines.
pub const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Drop every non-standard `format`, the `$schema` line and `"default": null` (recursively), and turn
/// a `oneOf` of string constants (schemars' enums with a description per variant) into one `enum`.
pub fn clean(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let drop = o
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !STANDARD_FORMATS.contains(&f));
            if drop {
                o.remove("format");
            }
            o.remove("$schema");
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            let consts: Option<Vec<Value>> =
                o.get("oneOf").and_then(Value::as_array).and_then(|alts| {
                    alts.iter()
                        .map(|a| {
                            (a.get("type") == Some(&json!("string")))
                                .then(|| a.get("const").cloned())
                                .flatten()
                        })
                        .collect()
                });
            if let Some(values) = consts {
                o.remove("oneOf");
                o.insert("type".into(), json!("string"));
                o.insert("enum".into(), Value::Array(values));
            }
            for (_, x) in o.iter_mut() {
                clean(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(clean),
        _ => {}
    }
}

/// The schema of `submit_job.image` (`raibid_core::image::ImageRequest`, validated by
/// `ImageRequest::from_json`).
pub fn image_schema() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "description": "Build, test and publish a container image (Buildah) instead of running the cargo pipeline. Leave it out for a Rust build.",
        "default": null,
        "type": ["object", "null"],
        "additionalProperties": false,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "description": "Repository path in the registry, e.g. `team/app` (lowercase OCI name)."},
            "containerfile": {"type": "string", "description": "Containerfile path in the repository (default `Containerfile`, then `Dockerfile`)."},
            "context": {"type": "string", "description": "Build context in the repository (default `.`)."},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "Tags (default: the short commit sha and the branch name)."},
            "build_args": {"type": "object", "additionalProperties": {"type": "string"}, "description": "`--build-arg KEY=VALUE`."},
            "target": {"type": "string", "description": "Target stage."},
            "test": {
                "type": "object",
                "additionalProperties": false,
                "description": "Commands run inside the built image before it is published.",
                "properties": {
                    "commands": {"type": "array", "items": {"anyOf": [{"type": "string"}, strings]}, "description": "Each a shell command or an argv; the first non-zero exit fails the job."},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "timeout": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}], "description": "Seconds, or `90s`, `10m`, `1h30m` (default 10m)."}
                }
            },
            "publish": {"type": "boolean", "description": "Push after build and tests succeeded (default true)."},
            "registry": {"type": "string", "description": "Registry host (and namespace); default the agent's registry."},
            "secrets": {"type": "array", "items": {"type": "string"}, "description": "Names of build secrets; the values come from the agent, never from the request."}
        }
    })
}

fn patch(schema: &Arc<JsonObject>, f: impl FnOnce(&mut Value)) -> Arc<JsonObject> {
    let mut v = Value::Object((**schema).clone());
    f(&mut v);
    match v {
        Value::Object(o) => Arc::new(o),
        _ => schema.clone(),
    }
}

/// The tools as `tools/list` publishes them; `schemes` are the clone-URL schemes this dispatcher
/// accepts (`submit_job.repo_url` names them rather than promising what it refuses).
pub fn tools(mut list: Vec<Tool>, schemes: &[String]) -> Vec<Tool> {
    for t in &mut list {
        let name = t.name.to_string();
        t.input_schema = patch(&t.input_schema, |v| {
            clean(v);
            if name == "submit_job" {
                v["properties"]["image"] = image_schema();
                v["properties"]["repo_url"]["description"] = Value::String(format!(
                    "Clone URL of the repository; this dispatcher accepts {} URLs of the hosts it is configured for, e.g. `http://gitea-http.gitea:3000/me/app.git`.",
                    schemes.join(", ")
                ));
            }
        });
        if let Some(o) = &t.output_schema {
            t.output_schema = Some(patch(o, clean));
        }
    }
    list
}
