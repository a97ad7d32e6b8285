//! The pipeline a job runs: `.raibid.yaml` in the repository, or the default Rust pipeline.
//!
//! ```yaml
//! name: ci                 # optional; shown in the commit status (whose context is always raibid/ci)
//! timeout: 30m             # optional job timeout (seconds as a number, or 90s / 10m / 1h30m)
//! env: { RUST_BACKTRACE: "1" }
//! steps:
//!   - name: build
//!     run: cargo build --all-targets
//!     timeout: 20m
//!     env: { CARGO_TERM_COLOR: never }
//!   - name: test
//!     run: cargo test
//! ```
//!
//! Unknown keys and bad values are errors that name the key; nothing is silently ignored. A step's `run`
//! is a shell command written by the repository's owner (like any CI's `run:`), executed with `sh -c` in
//! the job's workspace; nothing from a webhook or API request is ever put into it.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The file name of a repository's pipeline.
pub const PIPELINE_FILE: &str = ".raibid.yaml";
/// Pipeline files larger than this are refused.
pub const MAX_PIPELINE_BYTES: usize = 256 * 1024;
/// Step names reserved for the agent's own steps.
pub const RESERVED_STEPS: [&str; 4] = ["clone", "config", "patch", crate::artifacts::STEP];
/// Default job timeout.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A parsed, validated pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// Name (commit-status context suffix).
    pub name: String,
    /// Job-level environment, applied to every step (step env wins).
    pub env: BTreeMap<String, String>,
    /// Job timeout.
    pub timeout: Duration,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Names of secrets the steps need: each is taken from the agent's `RAIBID_SECRET_<NAME>`, given to
    /// the steps as `<NAME>`, and masked as `***` in the job log.
    pub secrets: Vec<String>,
    /// `image:`: a push of this repository is an image job (`raibid_core::image`, ADR 0006).
    pub image: Option<crate::image::ImageRequest>,
    /// `gpu: true`: the steps need a GPU; a push of this repository runs on a GPU agent (kind `gpu`).
    pub gpu: bool,
    /// `artifacts:`: files uploaded to the registry after the steps (`crate::artifacts`).
    pub artifacts: Option<crate::artifacts::ArtifactSpec>,
    /// `matrix:`: the push fans out into one job per cell (`crate::matrix`).
    pub matrix: Option<crate::matrix::Matrix>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Unique name.
    pub name: String,
    /// Shell command (`sh -c`).
    pub run: String,
    /// Step environment.
    pub env: BTreeMap<String, String>,
    /// Step timeout, if any (the job timeout always applies).
    pub timeout: Option<Duration>,
}

/// A problem with a pipeline file, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{PIPELINE_FILE}: {0}")]
pub struct PipelineError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout: Option<RawDuration>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    image: Option<crate::image::ImageRequest>,
    #[serde(default)]
    gpu: bool,
    #[serde(default)]
    artifacts: Option<crate::artifacts::RawArtifacts>,
    matrix: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    run: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(u64),
    Text(String),
}

/// Parse `90`, `90s`, `10m`, `1h30m`, `2h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().ok()?;
            num.clear();
            let mult = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return None,
            };
            total = total.checked_add(n.checked_mul(mult)?)?;
        }
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

fn duration(key: &str, raw: RawDuration) -> Result<Duration, PipelineError> {
    let d = match raw {
        RawDuration::Secs(n) => Duration::from_secs(n),
        RawDuration::Text(t) => parse_duration(&t).ok_or_else(|| {
            PipelineError(format!(
                "{key}: `{t}` is not a duration (use seconds, or e.g. 90s, 10m, 1h30m)"
            ))
        })?,
    };
    if d.is_zero() {
        return Err(PipelineError(format!("{key}: must be greater than zero")));
    }
    Ok(d)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_env_key(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn check_env(key: &str, env: &BTreeMap<String, String>) -> Result<(), PipelineError> {
    for (k, v) in env {
        if !valid_env_key(k) {
            return Err(PipelineError(format!(
                "{key}.{k}: not a valid environment variable name"
            )));
        }
        if v.contains('\0') {
            return Err(PipelineError(format!("{key}.{k}: contains a NUL byte")));
        }
    }
    Ok(())
}

impl Pipeline {
    /// Parse and validate the text of a `.raibid.yaml`.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        if text.len() > MAX_PIPELINE_BYTES {
            return Err(PipelineError(format!(
                "file is {} bytes, the limit is {MAX_PIPELINE_BYTES}",
                text.len()
            )));
        }
        let raw: RawPipeline =
            serde_yaml_ng::from_str(text).map_err(|e| PipelineError(e.to_string()))?;
        let name = raw.name.unwrap_or_else(|| "ci".to_string());
        if !valid_name(&name) {
            return Err(PipelineError(format!(
                "name: `{name}` must be 1-64 characters of A-Z a-z 0-9 - _ ."
            )));
        }
        check_env("env", &raw.env)?;
        let timeout = match raw.timeout {
            Some(t) => duration("timeout", t)?,
            None => DEFAULT_JOB_TIMEOUT,
        };
        if let Some(img) = &raw.image {
            img.validate().map_err(|e| PipelineError(e.to_string()))?;
        }
        if !raw.steps.is_empty() && raw.image.is_some() {
            return Err(PipelineError(
                "steps: a pipeline with `image:` is an image job (build, test, publish); leave `steps:` out".into(),
            ));
        }
        if raw.gpu && raw.image.is_some() {
            return Err(PipelineError(
                "gpu: an image job builds an image and cannot ask for a GPU; use `gpu: true` with `steps:`".into(),
            ));
        }
        if raw.steps.is_empty() && raw.image.is_none() {
            return Err(PipelineError(
                "steps: at least one step is required (or an `image:` section)".into(),
            ));
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        for (i, s) in raw.steps.into_iter().enumerate() {
            let key = format!("steps[{i}]");
            if !valid_name(&s.name) {
                return Err(PipelineError(format!(
                    "{key}.name: `{}` must be 1-64 characters of A-Z a-z 0-9 - _ .",
                    s.name
                )));
            }
            if RESERVED_STEPS.contains(&s.name.as_str()) {
                return Err(PipelineError(format!(
                    "{key}.name: `{}` is reserved for the agent's own step",
                    s.name
                )));
            }
            if steps.iter().any(|p: &Step| p.name == s.name) {
                return Err(PipelineError(format!(
                    "{key}.name: `{}` is used by an earlier step",
                    s.name
                )));
            }
            if s.run.trim().is_empty() {
                return Err(PipelineError(format!("{key}.run: must not be empty")));
            }
            if s.run.contains('\0') {
                return Err(PipelineError(format!("{key}.run: contains a NUL byte")));
            }
            check_env(&format!("{key}.env"), &s.env)?;
            let timeout = match s.timeout {
                Some(t) => Some(duration(&format!("{key}.timeout"), t)?),
                None => None,
            };
            steps.push(Step {
                name: s.name,
                run: s.run,
                env: s.env,
                timeout,
            });
        }
        for (i, name) in raw.secrets.iter().enumerate() {
            if !valid_env_key(name) {
                return Err(PipelineError(format!(
                    "secrets[{i}]: `{name}` is not a valid environment variable name"
                )));
            }
            if raw.env.contains_key(name) {
                return Err(PipelineError(format!(
                    "secrets[{i}]: `{name}` is also set in env; a secret's value comes from the agent"
                )));
            }
        }
        let artifacts = match raw.artifacts {
            Some(_) if raw.image.is_some() => {
                return Err(PipelineError(
                    "artifacts: an image job publishes an image; `artifacts:` goes with `steps:`"
                        .into(),
                ))
            }
            Some(a) => Some(crate::artifacts::ArtifactSpec::from_raw(a).map_err(PipelineError)?),
            None => None,
        };
        let matrix = crate::matrix::parse_in_pipeline(raw.matrix.as_ref(), raw.image.is_some())
            .map_err(|e| PipelineError(e.0))?;
        Ok(Pipeline {
            name,
            env: raw.env,
            timeout,
            steps,
            secrets: raw.secrets,
            image: raw.image,
            gpu: raw.gpu,
            artifacts,
            matrix,
        })
    }

    /// The default Rust pipeline: `cargo build --all-targets` then `cargo test`, with `--locked` when the
    /// repository has a `Cargo.lock`.
    pub fn default_rust(has_lockfile: bool) -> Pipeline {
        let locked = if has_lockfile { " --locked" } else { "" };
        let step = |name: &str, run: String| Step {
            name: name.into(),
            run,
            env: BTreeMap::new(),
            timeout: None,
        };
        Pipeline {
            name: "ci".into(),
            env: BTreeMap::new(),
            timeout: DEFAULT_JOB_TIMEOUT,
            steps: vec![
                // JSON messages: the agent keeps the diagnostics and writes their rendered text to the log.
                step(
                    "build",
                    format!("cargo build --all-targets{locked} --message-format=json"),
                ),
                step("test", format!("cargo test{locked} --message-format=json")),
            ],
            secrets: Vec::new(),
            image: None,
            gpu: false,
            artifacts: None,
            matrix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_pipeline() {
        let p = Pipeline::parse(
            "name: ci-arm\ntimeout: 1h30m\nenv: {A: '1'}\nsteps:\n  - name: build\n    run: cargo build\n    timeout: 90\n    env: {B: x}\n  - name: test\n    run: cargo test\n",
        )
        .unwrap();
        assert_eq!(p.name, "ci-arm");
        assert_eq!(p.timeout, Duration::from_secs(5400));
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].timeout, Some(Duration::from_secs(90)));
        assert_eq!(p.steps[0].env["B"], "x");
        assert_eq!(p.env["A"], "1");
        assert_eq!(p.steps[1].timeout, None);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Pipeline::parse("steps:\n  - name: a\n    run: x\n    tiemout: 5\n").unwrap_err();
        assert!(e.0.contains("tiemout"), "{e}");
        let e = Pipeline::parse("stpes: []\n").unwrap_err();
        assert!(e.0.contains("stpes"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("steps: []\n", "steps"),
            (
                "steps:\n  - name: a\n    run: x\n    timeout: soon\n",
                "steps[0].timeout",
            ),
            ("timeout: 0\nsteps:\n  - name: a\n    run: x\n", "timeout"),
            ("steps:\n  - name: clone\n    run: x\n", "steps[0].name"),
            (
                "steps:\n  - name: a\n    run: x\n  - name: a\n    run: y\n",
                "steps[1].name",
            ),
            ("steps:\n  - name: 'a b'\n    run: x\n", "steps[0].name"),
            ("steps:\n  - name: a\n    run: '  '\n", "steps[0].run"),
            (
                "env: {'1BAD': x}\nsteps:\n  - name: a\n    run: x\n",
                "env.1BAD",
            ),
            (
                "name: 'no/slash'\nsteps:\n  - name: a\n    run: x\n",
                "name",
            ),
        ];
        for (text, key) in cases {
            let e = Pipeline::parse(text).unwrap_err();
            assert!(e.0.contains(key), "{text:?} → {e} should name {key}");
        }
    }

    #[test]
    fn an_image_section_is_parsed_and_checked() {
        let p = Pipeline::parse("image:\n  name: team/app\n  test:\n    commands: ['cat /msg']\n")
            .unwrap();
        let img = p.image.unwrap();
        assert_eq!(img.name, "team/app");
        assert!(p.steps.is_empty());
        let e = Pipeline::parse("image:\n  name: 'x; rm -rf /'\n").unwrap_err();
        assert!(e.0.contains("image.name"), "{e}");
        let e = Pipeline::parse("image:\n  name: a\n  tagz: [x]\n").unwrap_err();
        assert!(e.0.contains("tagz"), "{e}");
    }

    #[test]
    fn an_artifacts_section_is_parsed_and_checked() {
        let p = Pipeline::parse(
            "steps:\n  - name: b\n    run: x\nartifacts:\n  paths: [target/release/tool]\n  when: always\n",
        )
        .unwrap();
        let a = p.artifacts.unwrap();
        assert_eq!(a.paths, ["target/release/tool"]);
        assert_eq!(a.when, crate::artifacts::When::Always);
        let e = Pipeline::parse("steps:\n  - name: b\n    run: x\nartifacts: [/etc/shadow]\n")
            .unwrap_err();
        assert!(
            e.0.contains("artifacts.paths[0]") && e.0.contains("absolute"),
            "{e}"
        );
        let e = Pipeline::parse("steps:\n  - name: artifacts\n    run: x\n").unwrap_err();
        assert!(e.0.contains("reserved"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5m3"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn default_pipeline_uses_locked_with_a_lockfile() {
        let p = Pipeline::default_rust(true);
        assert_eq!(
            p.steps[0].run,
            "cargo build --all-targets --locked --message-format=json"
        );
        assert_eq!(p.steps[1].run, "cargo test --locked --message-format=json");
        let p = Pipeline::default_rust(false);
        assert_eq!(p.steps[1].run, "cargo test --message-format=json");
    }
}
