//! Cargo's JSON messages and libtest's text output turned into structured diagnostics. Pure: no I/O.
//!
//! The default Rust pipeline runs cargo with `--message-format=json`. Every stdout line of a step goes
//! through [`Collector::line`], which
//! - turns a `compiler-message` into its `rendered` text (the lines a human would have seen, so the job
//!   log still reads like a normal build) and records level, code, message, file, line and column;
//! - counts compilation units from `compiler-artifact` messages into [`CargoUnits`]: a unit (package,
//!   target name and kinds, test profile) reported by several cargo invocations of the job (`cargo build
//!   --all-targets`, then `cargo test`) counts once, as fresh only if it was fresh every time. This is the
//!   one count of the job: the record's `cargo` and the cache figures (`cache.units_fresh/total`) both
//!   come from it, and each stdout line is parsed once;
//! - drops `build-finished` and the other machine-only messages;
//! - watches libtest's plain output for failing tests: the name, the panic message, its `file:line`
//!   and the test's captured output (bounded).
//!
//! [`Collector::finish`] returns the deduplicated [`Diagnostics`], ordered by severity.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;

/// Most distinct compiler messages kept per job (the rest are counted in `dropped`).
pub const MAX_COMPILER_MESSAGES: usize = 5000;
/// Most failing tests kept per job.
pub const MAX_FAILING_TESTS: usize = 1000;
/// Longest `rendered` text kept per message, in bytes.
pub const MAX_RENDERED_BYTES: usize = 4096;
/// Longest captured output kept per failing test, in bytes (its tail).
pub const MAX_TEST_OUTPUT_BYTES: usize = 4096;
/// Longest panic message kept, in bytes.
pub const MAX_PANIC_BYTES: usize = 2048;

// Each distinct unit counts once across the job's steps, as fresh only if it was fresh every time
// (`Collector::units`). The doc comments below are the published MCP schema's descriptions
// (raibid-dispatcher's `tests/snapshots/mcp_tools.json`).
/// Compilation units of a job's cargo invocations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CargoUnits {
    /// Units cargo reused from the target directory (`"fresh": true`).
    pub fresh: u32,
    /// Units cargo reported (`compiler-artifact` messages).
    pub total: u32,
}

/// One compiler diagnostic (rustc's JSON through cargo's `compiler-message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CompilerMessage {
    /// `error`, `warning`, `note`, `help`, `failure-note`, `error: internal compiler error`.
    pub level: String,
    /// Error or lint code, e.g. `E0308` or `unused_variables`.
    pub code: Option<String>,
    /// The one-line message, e.g. `mismatched types`.
    pub message: String,
    /// File of the primary span, relative to the package (e.g. `src/lib.rs`).
    pub file: Option<String>,
    /// 1-based line of the primary span.
    pub line: Option<u32>,
    /// 1-based column of the primary span.
    pub column: Option<u32>,
    /// The text rustc would have printed (snippet with the caret), bounded.
    pub rendered: Option<String>,
    /// Cargo target (crate) that produced it.
    pub target: Option<String>,
    /// Step that produced it first.
    pub step: Option<String>,
    /// How many times the same message was reported (several targets or steps).
    pub count: u32,
    /// rustc's suggested fixes as data (from its JSON: `suggested_replacement` spans), at most
    /// [`MAX_SUGGESTIONS`]; apply a `MachineApplicable` one as it is, without parsing `rendered`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<Suggestion>,
}

/// Most suggestions kept per compiler message.
pub const MAX_SUGGESTIONS: usize = 8;
/// Longest replacement text kept (longer suggestions are left out).
pub const MAX_REPLACEMENT_BYTES: usize = 1024;

/// A fix rustc suggests: replace the span `line_start:column_start` – `line_end:column_end` (1-based,
/// end exclusive, columns in characters) of `file` with `replacement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Suggestion {
    /// What the fix does (rustc's help message), e.g. `if this is intentional, prefix it with an underscore`.
    pub message: String,
    /// File, relative to the package (e.g. `src/lib.rs`).
    pub file: String,
    /// First line of the span to replace.
    pub line_start: u32,
    /// First column of the span to replace.
    pub column_start: u32,
    /// Last line of the span to replace.
    pub line_end: u32,
    /// Column just after the span to replace.
    pub column_end: u32,
    /// The text to put there (empty: delete the span).
    pub replacement: String,
    /// rustc's `suggestion_applicability`: `MachineApplicable` (apply as is), `MaybeIncorrect`,
    /// `HasPlaceholders` (edit before applying) or `Unspecified`.
    pub applicability: Option<String>,
}

/// A failing test from libtest's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FailingTest {
    /// Test name, e.g. `tests::adds`.
    pub name: String,
    /// The panic message, e.g. ``assertion `left == right` failed``.
    pub panic_message: Option<String>,
    /// File of the panic.
    pub file: Option<String>,
    /// Line of the panic.
    pub line: Option<u32>,
    /// Column of the panic.
    pub column: Option<u32>,
    /// The test's captured output (its tail, bounded).
    pub output: String,
    /// True when `output` was cut to its tail.
    pub output_truncated: bool,
    /// Step that ran it.
    pub step: Option<String>,
}

/// Everything structured a job produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Diagnostics {
    /// Distinct compiler messages, most severe first.
    pub compiler: Vec<CompilerMessage>,
    /// Failing tests, in the order they were reported.
    pub tests: Vec<FailingTest>,
    /// Distinct compiler messages not kept (past [`MAX_COMPILER_MESSAGES`]).
    #[serde(default)]
    pub dropped: u64,
    /// True when any step printed cargo JSON messages.
    #[serde(default)]
    pub cargo_json_seen: bool,
}

/// Rank of a level: lower is more severe.
pub fn severity_rank(level: &str) -> u8 {
    match level {
        l if l.starts_with("error") => 0,
        "warning" => 1,
        "note" => 2,
        "help" => 3,
        _ => 4,
    }
}

/// One parsed cargo JSON message.
#[derive(Debug, Clone, PartialEq)]
pub enum CargoMessage {
    /// A compiler diagnostic (with its `rendered` text, unbounded).
    Compiler(CompilerMessage),
    /// A unit was built or reused.
    Artifact {
        /// Reused from the target directory.
        fresh: bool,
        /// What makes it one unit across cargo invocations: package id, target name and kinds, test
        /// profile.
        unit: String,
    },
    /// `cargo` finished this build.
    BuildFinished {
        /// The build succeeded.
        success: bool,
    },
    /// Any other message (`build-script-executed`, ...).
    Other,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    reason: Cow<'a, str>,
    #[serde(default)]
    message: Option<RawDiagnostic>,
    #[serde(default)]
    fresh: Option<bool>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default, borrow)]
    package_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    target: Option<RawTarget<'a>>,
    #[serde(default)]
    profile: Option<RawProfile>,
}

#[derive(Deserialize)]
struct RawTarget<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawProfile {
    #[serde(default)]
    test: bool,
}

#[derive(Deserialize)]
struct RawDiagnostic {
    message: String,
    #[serde(default)]
    code: Option<RawCode>,
    level: String,
    #[serde(default)]
    spans: Vec<RawSpan>,
    #[serde(default)]
    rendered: Option<String>,
    #[serde(default)]
    children: Vec<RawChild>,
}

#[derive(Deserialize)]
struct RawChild {
    message: String,
    #[serde(default)]
    spans: Vec<RawSpan>,
}

#[derive(Deserialize)]
struct RawCode {
    code: String,
}

#[derive(Deserialize)]
struct RawSpan {
    file_name: String,
    line_start: u32,
    column_start: u32,
    #[serde(default)]
    line_end: Option<u32>,
    #[serde(default)]
    column_end: Option<u32>,
    #[serde(default)]
    is_primary: bool,
    #[serde(default)]
    suggested_replacement: Option<String>,
    #[serde(default)]
    suggestion_applicability: Option<String>,
}

/// The suggestions of a diagnostic: every span (its own or its children's) carrying a replacement.
fn suggestions(d: &RawDiagnostic) -> Vec<Suggestion> {
    let own = d.spans.iter().map(|s| (d.message.as_str(), s));
    let children = d
        .children
        .iter()
        .flat_map(|c| c.spans.iter().map(move |s| (c.message.as_str(), s)));
    own.chain(children)
        .filter_map(|(message, s)| {
            let r = s.suggested_replacement.as_ref()?;
            (r.len() <= MAX_REPLACEMENT_BYTES).then(|| Suggestion {
                message: message.to_string(),
                file: s.file_name.clone(),
                line_start: s.line_start,
                column_start: s.column_start,
                line_end: s.line_end.unwrap_or(s.line_start),
                column_end: s.column_end.unwrap_or(s.column_start),
                replacement: r.clone(),
                applicability: s.suggestion_applicability.clone(),
            })
        })
        .take(MAX_SUGGESTIONS)
        .collect()
}

/// Parse one line of cargo's `--message-format=json` output. `None` when it is not a cargo message.
pub fn parse_line(line: &str) -> Option<CargoMessage> {
    let t = line.trim_start();
    if !t.starts_with("{\"reason\":") {
        return None;
    }
    let raw: RawMessage = serde_json::from_str(t).ok()?;
    Some(match raw.reason.as_ref() {
        "compiler-message" => {
            let d = raw.message?;
            let primary = d
                .spans
                .iter()
                .find(|s| s.is_primary)
                .or_else(|| d.spans.first());
            let suggestions = suggestions(&d);
            CargoMessage::Compiler(CompilerMessage {
                suggestions,
                level: d.level,
                code: d.code.map(|c| c.code),
                message: d.message,
                file: primary.map(|s| s.file_name.clone()),
                line: primary.map(|s| s.line_start),
                column: primary.map(|s| s.column_start),
                rendered: d.rendered,
                target: raw.target.map(|t| t.name.into_owned()),
                step: None,
                count: 1,
            })
        }
        "compiler-artifact" => {
            let (name, kind) = match &raw.target {
                Some(t) => (t.name.as_ref(), t.kind.join(",")),
                None => ("", String::new()),
            };
            CargoMessage::Artifact {
                fresh: raw.fresh.unwrap_or(false),
                unit: format!(
                    "{}|{name}|{kind}|{}",
                    raw.package_id.as_deref().unwrap_or(""),
                    raw.profile.is_some_and(|p| p.test)
                ),
            }
        }
        "build-finished" => CargoMessage::BuildFinished {
            success: raw.success.unwrap_or(false),
        },
        _ => CargoMessage::Other,
    })
}

/// Cut `s` to at most `max` bytes at a char boundary (keeping the head).
pub fn truncate_head(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// Keep the last `max` bytes of `s` at a char boundary.
pub fn truncate_tail(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    (&s[start..], true)
}

/// What the log should show instead of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    /// Keep the line as it is.
    Keep,
    /// Drop it (machine-only message).
    Drop,
    /// Replace it with these lines (a diagnostic's rendered text), written on stderr.
    Replace(Vec<String>),
}

/// Libtest's text output of one step, as a small state machine.
#[derive(Debug, Default)]
struct Libtest {
    /// Names from `test NAME ... FAILED`, in order.
    failed: Vec<String>,
    /// Sections `---- NAME stdout ----`: name → lines.
    sections: HashMap<String, Vec<String>>,
    current: Option<(String, Vec<String>, usize)>,
}

impl Libtest {
    fn line(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            self.close();
            self.current = Some((name.to_string(), Vec::new(), 0));
            return;
        }
        if self.current.is_some() && (line == "failures:" || line.starts_with("test result:")) {
            self.close();
        }
        if let Some((_, lines, bytes)) = self.current.as_mut() {
            // Keep a bounded window: drop from the front once past twice the output limit.
            *bytes += line.len() + 1;
            lines.push(line.to_string());
            while *bytes > 2 * MAX_TEST_OUTPUT_BYTES && lines.len() > 1 {
                let first = lines.remove(0);
                *bytes -= first.len() + 1;
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest
                .strip_suffix(" ... FAILED")
                .or_else(|| rest.strip_suffix(" - should panic ... FAILED"))
            {
                if !self.failed.iter().any(|n| n == name) && self.failed.len() < MAX_FAILING_TESTS {
                    self.failed.push(name.to_string());
                }
            }
        }
    }

    fn close(&mut self) {
        if let Some((name, lines, _)) = self.current.take() {
            if !self.failed.contains(&name) && self.failed.len() < MAX_FAILING_TESTS {
                self.failed.push(name.clone());
            }
            self.sections.insert(name, lines);
        }
    }

    fn finish(mut self, step: &str) -> Vec<FailingTest> {
        self.close();
        let mut out = Vec::new();
        for name in self.failed {
            let lines = self.sections.remove(&name).unwrap_or_default();
            out.push(failing_test(&name, &lines, step));
        }
        out
    }
}

/// `file:line:col` → parts (the file may contain `:` only on odd platforms; split from the right).
fn split_location(loc: &str) -> Option<(String, u32, u32)> {
    let mut it = loc.rsplitn(3, ':');
    let col = it.next()?.trim().parse().ok()?;
    let line = it.next()?.trim().parse().ok()?;
    let file = it.next()?.trim().to_string();
    if file.is_empty() {
        return None;
    }
    Some((file, line, col))
}

fn failing_test(name: &str, lines: &[String], step: &str) -> FailingTest {
    let mut t = FailingTest {
        name: name.to_string(),
        panic_message: None,
        file: None,
        line: None,
        column: None,
        output: String::new(),
        output_truncated: false,
        step: Some(step.to_string()),
    };
    // Drop the blank lines around the section.
    let start = lines.iter().position(|l| !l.trim().is_empty()).unwrap_or(0);
    let end = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(start, |e| e + 1);
    let body = &lines[start..end.max(start)];
    let joined = body.join("\n");
    let (tail, cut) = truncate_tail(&joined, MAX_TEST_OUTPUT_BYTES);
    t.output = tail.to_string();
    t.output_truncated = cut;
    if let Some(i) = body
        .iter()
        .position(|l| l.starts_with("thread '") && l.contains(" panicked at "))
    {
        let l = &body[i];
        let after = l
            .split_once(" panicked at ")
            .map(|(_, a)| a)
            .unwrap_or_default();
        let mut msg_lines: Vec<&str> = Vec::new();
        if let Some(loc) = after.strip_suffix(':') {
            // Rust ≥ 1.73: `thread 'x' panicked at src/lib.rs:9:9:` then the message lines.
            if let Some((f, ln, c)) = split_location(loc) {
                t.file = Some(f);
                t.line = Some(ln);
                t.column = Some(c);
            }
            for m in &body[i + 1..] {
                if m.starts_with("note: run with `RUST_BACKTRACE")
                    || m.starts_with("stack backtrace:")
                    || (m.starts_with("thread '") && m.contains(" panicked at "))
                {
                    break;
                }
                msg_lines.push(m);
            }
        } else if let Some((msg, loc)) = after.rsplit_once(", ") {
            // Older: `thread 'x' panicked at 'message', src/lib.rs:9:9`.
            if let Some((f, ln, c)) = split_location(loc) {
                t.file = Some(f);
                t.line = Some(ln);
                t.column = Some(c);
            }
            msg_lines.push(msg.trim_matches('\''));
        }
        while msg_lines.last().is_some_and(|m| m.trim().is_empty()) {
            msg_lines.pop();
        }
        if !msg_lines.is_empty() {
            let msg = msg_lines.join("\n");
            t.panic_message = Some(truncate_head(&msg, MAX_PANIC_BYTES).0.to_string());
        }
    }
    t
}

/// What makes two compiler messages the same: level, code, message, file, line, column.
type DedupKey = (
    String,
    Option<String>,
    String,
    Option<String>,
    Option<u32>,
    Option<u32>,
);

/// Collects diagnostics from the lines of a job's steps.
#[derive(Debug, Default)]
pub struct Collector {
    compiler: Vec<CompilerMessage>,
    seen: HashMap<DedupKey, usize>,
    dropped: u64,
    /// Unit identity → fresh every time it was reported.
    units: HashMap<String, bool>,
    json_seen: bool,
    libtest: Vec<(String, Libtest)>,
}

impl Collector {
    /// A new, empty collector.
    pub fn new() -> Collector {
        Collector::default()
    }

    /// Look at one line of `step`'s `stream` and say what the log should show instead.
    pub fn line(&mut self, step: &str, stream: &str, line: &str) -> LineOutcome {
        if stream != "stdout" {
            return LineOutcome::Keep;
        }
        if let Some(msg) = parse_line(line) {
            self.json_seen = true;
            return match msg {
                CargoMessage::Compiler(m) => {
                    let shown = m
                        .rendered
                        .as_deref()
                        .map(|r| {
                            r.trim_end_matches('\n')
                                .lines()
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_else(|| vec![format!("{}: {}", m.level, m.message)]);
                    self.add(step, m);
                    LineOutcome::Replace(shown)
                }
                CargoMessage::Artifact { fresh, unit } => {
                    let e = self.units.entry(unit).or_insert(true);
                    *e = *e && fresh;
                    LineOutcome::Drop
                }
                CargoMessage::BuildFinished { .. } | CargoMessage::Other => LineOutcome::Drop,
            };
        }
        let lt = match self.libtest.iter().position(|(s, _)| s == step) {
            Some(i) => &mut self.libtest[i].1,
            None => {
                self.libtest.push((step.to_string(), Libtest::default()));
                let last = self.libtest.len() - 1;
                &mut self.libtest[last].1
            }
        };
        lt.line(line);
        LineOutcome::Keep
    }

    fn add(&mut self, step: &str, mut m: CompilerMessage) {
        // Summary lines carry nothing an agent can act on.
        if m.file.is_none()
            && (m.message.starts_with("aborting due to")
                || m.level == "failure-note"
                || m.message.ends_with("warnings emitted")
                || m.message.ends_with("warning emitted"))
        {
            return;
        }
        let key = (
            m.level.clone(),
            m.code.clone(),
            m.message.clone(),
            m.file.clone(),
            m.line,
            m.column,
        );
        if let Some(&i) = self.seen.get(&key) {
            self.compiler[i].count = self.compiler[i].count.saturating_add(1);
            return;
        }
        if self.compiler.len() >= MAX_COMPILER_MESSAGES {
            self.dropped += 1;
            return;
        }
        if let Some(r) = m.rendered.take() {
            m.rendered = Some(truncate_head(&r, MAX_RENDERED_BYTES).0.to_string());
        }
        m.step = Some(step.to_string());
        self.seen.insert(key, self.compiler.len());
        self.compiler.push(m);
    }

    /// Units counted so far (`None` when cargo reported no unit).
    pub fn units(&self) -> Option<CargoUnits> {
        if self.units.is_empty() {
            return None;
        }
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Some(CargoUnits {
            fresh: count(self.units.values().filter(|f| **f).count()),
            total: count(self.units.len()),
        })
    }

    /// The diagnostics: compiler messages deduplicated and ordered by severity (then file and line),
    /// failing tests in the order they were reported.
    pub fn finish(self) -> (Diagnostics, Option<CargoUnits>) {
        let units = self.units();
        let mut compiler = self.compiler;
        compiler.sort_by(|a, b| {
            severity_rank(&a.level)
                .cmp(&severity_rank(&b.level))
                .then_with(|| a.file.cmp(&b.file))
                .then_with(|| a.line.cmp(&b.line))
                .then_with(|| a.column.cmp(&b.column))
        });
        let mut tests = Vec::new();
        for (step, lt) in self.libtest {
            for t in lt.finish(&step) {
                if tests.len() < MAX_FAILING_TESTS {
                    tests.push(t);
                }
            }
        }
        (
            Diagnostics {
                compiler,
                tests,
                dropped: self.dropped,
                cargo_json_seen: self.json_seen,
            },
            units,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E0308: &str = r#"{"reason":"compiler-message","package_id":"path+file:///w/demo#0.1.0","manifest_path":"/w/demo/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"demo","src_path":"/w/demo/src/lib.rs","edition":"2021","doc":true,"doctest":true,"test":true},"message":{"$message_type":"diagnostic","message":"mismatched types","code":{"code":"E0308","explanation":"Expected type did not match the received type.\n"},"level":"error","spans":[{"file_name":"src/lib.rs","byte_start":40,"byte_end":47,"line_start":2,"line_end":2,"column_start":18,"column_end":25,"is_primary":true,"text":[{"text":"    let x: u32 = \"hello\";","highlight_start":18,"highlight_end":25}],"label":"expected `u32`, found `&str`","suggested_replacement":null,"suggestion_applicability":null,"expansion":null}],"children":[],"rendered":"error[E0308]: mismatched types\n --> src/lib.rs:2:18\n  |\n2 |     let x: u32 = \"hello\";\n  |            ---   ^^^^^^^ expected `u32`, found `&str`\n\n"}}"#;

    /// rustc's unused-variable warning, as cargo prints it: the fix is a child's span with a
    /// machine-applicable replacement.
    const UNUSED: &str = r#"{"reason":"compiler-message","package_id":"path+file:///w/demo#0.1.0","manifest_path":"/w/demo/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"demo","src_path":"/w/demo/src/lib.rs","edition":"2021","doc":true,"doctest":true,"test":true},"message":{"$message_type":"diagnostic","message":"unused variable: `x`","code":{"code":"unused_variables","explanation":null},"level":"warning","spans":[{"file_name":"src/lib.rs","byte_start":29,"byte_end":30,"line_start":2,"line_end":2,"column_start":9,"column_end":10,"is_primary":true,"text":[{"text":"    let x = 1;","highlight_start":9,"highlight_end":10}],"label":null,"suggested_replacement":null,"suggestion_applicability":null,"expansion":null}],"children":[{"children":[],"code":null,"level":"note","message":"`#[warn(unused_variables)]` on by default","rendered":null,"spans":[]},{"children":[],"code":null,"level":"help","message":"if this is intentional, prefix it with an underscore","rendered":null,"spans":[{"file_name":"src/lib.rs","byte_start":29,"byte_end":30,"line_start":2,"line_end":2,"column_start":9,"column_end":10,"is_primary":true,"text":[{"text":"    let x = 1;","highlight_start":9,"highlight_end":10}],"label":null,"suggested_replacement":"_x","suggestion_applicability":"MachineApplicable","expansion":null}]}],"rendered":"warning: unused variable: `x`\n --> src/lib.rs:2:9\n  |\n2 |     let x = 1;\n  |         ^ help: if this is intentional, prefix it with an underscore: `_x`\n\n"}}"#;

    #[test]
    fn suggestions_are_data() {
        let Some(CargoMessage::Compiler(m)) = parse_line(UNUSED) else {
            panic!("not a compiler message")
        };
        assert_eq!(
            m.suggestions,
            vec![Suggestion {
                message: "if this is intentional, prefix it with an underscore".into(),
                file: "src/lib.rs".into(),
                line_start: 2,
                column_start: 9,
                line_end: 2,
                column_end: 10,
                replacement: "_x".into(),
                applicability: Some("MachineApplicable".into()),
            }]
        );
        let Some(CargoMessage::Compiler(e)) = parse_line(E0308) else {
            panic!("not a compiler message")
        };
        assert!(e.suggestions.is_empty());
    }

    #[test]
    fn compiler_message_becomes_rendered_lines_and_a_diagnostic() {
        let mut c = Collector::new();
        let out = c.line("build", "stdout", E0308);
        let LineOutcome::Replace(lines) = out else {
            panic!("{out:?}")
        };
        assert_eq!(lines[0], "error[E0308]: mismatched types");
        assert_eq!(lines[1], " --> src/lib.rs:2:18");
        // The same error from the test step is counted, not repeated.
        c.line("test", "stdout", E0308);
        let (d, units) = c.finish();
        assert_eq!(d.compiler.len(), 1);
        let m = &d.compiler[0];
        assert_eq!(m.code.as_deref(), Some("E0308"));
        assert_eq!(m.file.as_deref(), Some("src/lib.rs"));
        assert_eq!((m.line, m.column), (Some(2), Some(18)));
        assert_eq!(m.count, 2);
        assert_eq!(m.step.as_deref(), Some("build"));
        assert_eq!(units, None);
        assert!(d.cargo_json_seen);
    }

    #[test]
    fn artifacts_are_counted_and_dropped() {
        let mut c = Collector::new();
        let a = |pkg: &str, fresh: bool| {
            format!(
                r#"{{"reason":"compiler-artifact","package_id":"{pkg}","target":{{"name":"{pkg}"}},"fresh":{fresh}}}"#
            )
        };
        assert_eq!(c.line("build", "stdout", &a("x", true)), LineOutcome::Drop);
        assert_eq!(c.line("build", "stdout", &a("y", false)), LineOutcome::Drop);
        assert_eq!(c.line("build", "stdout", &a("z", true)), LineOutcome::Drop);
        assert_eq!(
            c.line(
                "build",
                "stdout",
                r#"{"reason":"build-finished","success":true}"#
            ),
            LineOutcome::Drop
        );
        assert_eq!(c.line("build", "stderr", &a("w", true)), LineOutcome::Keep);
        assert_eq!(c.line("build", "stdout", "plain"), LineOutcome::Keep);
        assert_eq!(c.finish().1, Some(CargoUnits { fresh: 2, total: 3 }));
    }

    #[test]
    fn a_unit_reported_by_several_steps_counts_once() {
        // `cargo build --all-targets` then `cargo test`: the test step reports the same units again.
        let mut c = Collector::new();
        let a = |pkg: &str, kind: &str, test: bool, fresh: bool| {
            format!(
                r#"{{"reason":"compiler-artifact","package_id":"{pkg}","target":{{"name":"{pkg}","kind":["{kind}"]}},"profile":{{"test":{test}}},"fresh":{fresh}}}"#
            )
        };
        c.line("build", "stdout", &a("dep", "lib", false, true));
        c.line("build", "stdout", &a("app", "lib", false, false));
        c.line("build", "stdout", &a("app", "lib", true, false));
        c.line("test", "stdout", &a("dep", "lib", false, true));
        c.line("test", "stdout", &a("app", "lib", false, true));
        c.line("test", "stdout", &a("app", "lib", true, true));
        c.line("test", "stdout", &a("app", "bin", false, true));
        // dep (fresh both times), app lib and app lib-test (rebuilt in build), app bin (fresh).
        assert_eq!(c.units(), Some(CargoUnits { fresh: 2, total: 4 }));
    }

    #[test]
    fn severity_order_and_summaries() {
        let mut c = Collector::new();
        let msg = |level: &str, text: &str, file: bool| {
            let spans = if file {
                r#"[{"file_name":"src/a.rs","line_start":3,"column_start":1,"is_primary":true}]"#
            } else {
                "[]"
            };
            format!(
                r#"{{"reason":"compiler-message","target":{{"name":"a"}},"message":{{"message":"{text}","code":null,"level":"{level}","spans":{spans},"rendered":"{level}: {text}\n"}}}}"#
            )
        };
        c.line("build", "stdout", &msg("warning", "unused variable", true));
        c.line(
            "build",
            "stdout",
            &msg("error", "aborting due to 1 previous error", false),
        );
        c.line("build", "stdout", &msg("error", "cannot find value", true));
        let (d, _) = c.finish();
        let levels: Vec<&str> = d.compiler.iter().map(|m| m.level.as_str()).collect();
        assert_eq!(levels, ["error", "warning"]);
    }

    #[test]
    fn libtest_failures_with_panic_location_and_output() {
        let text = "running 2 tests\ntest tests::ok ... ok\ntest tests::adds ... FAILED\n\nfailures:\n\n---- tests::adds stdout ----\nabout to add\nthread 'tests::adds' (4242) panicked at src/lib.rs:9:9:\nassertion `left == right` failed\n  left: 3\n right: 4\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n\n\nfailures:\n    tests::adds\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
        let mut c = Collector::new();
        for l in text.lines() {
            assert_eq!(c.line("test", "stdout", l), LineOutcome::Keep);
        }
        let (d, _) = c.finish();
        assert_eq!(d.tests.len(), 1);
        let t = &d.tests[0];
        assert_eq!(t.name, "tests::adds");
        assert_eq!(
            t.panic_message.as_deref(),
            Some("assertion `left == right` failed\n  left: 3\n right: 4")
        );
        assert_eq!(t.file.as_deref(), Some("src/lib.rs"));
        assert_eq!((t.line, t.column), (Some(9), Some(9)));
        assert!(t.output.starts_with("about to add"), "{}", t.output);
        assert!(!t.output_truncated);
        assert_eq!(t.step.as_deref(), Some("test"));
    }

    #[test]
    fn old_panic_format_and_bounded_output() {
        let mut c = Collector::new();
        c.line("test", "stdout", "---- it stdout ----");
        for i in 0..5000 {
            c.line("test", "stdout", &format!("noise line {i}"));
        }
        c.line(
            "test",
            "stdout",
            "thread 'it' panicked at 'boom', tests/t.rs:4:5",
        );
        c.line("test", "stdout", "failures:");
        let (d, _) = c.finish();
        let t = &d.tests[0];
        assert_eq!(t.panic_message.as_deref(), Some("boom"));
        assert_eq!(t.file.as_deref(), Some("tests/t.rs"));
        assert_eq!(t.line, Some(4));
        assert!(t.output_truncated);
        assert!(t.output.len() <= MAX_TEST_OUTPUT_BYTES);
    }

    #[test]
    fn not_cargo_json() {
        assert_eq!(parse_line("{\"a\":1}"), None);
        assert_eq!(parse_line("{\"reason\": broken"), None);
        assert_eq!(parse_line("Compiling x"), None);
    }

    #[test]
    fn cap_counts_dropped() {
        let mut c = Collector::new();
        for i in 0..(MAX_COMPILER_MESSAGES + 3) {
            let l = format!(
                r#"{{"reason":"compiler-message","target":{{"name":"a"}},"message":{{"message":"m{i}","code":null,"level":"warning","spans":[{{"file_name":"a.rs","line_start":1,"column_start":1,"is_primary":true}}],"rendered":null}}}}"#
            );
            c.line("b", "stdout", &l);
        }
        let (d, _) = c.finish();
        assert_eq!(d.compiler.len(), MAX_COMPILER_MESSAGES);
        assert_eq!(d.dropped, 3);
    }
}
