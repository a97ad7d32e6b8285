//! Build matrices (issue 23 §1): `.raibid.yaml` `matrix:` names axes of string values; one push fans out
//! into one job per cell, grouped under the push's job (the group's parent).
//!
//! ```yaml
//! matrix:
//!   features: ["", "serde", "full"]   # any axis: its value reaches the steps as RAIBID_MATRIX_FEATURES
//!   toolchain: [stable, "1.85"]       # well known: also RUSTUP_TOOLCHAIN
//!   exclude:
//!     - { features: full, toolchain: "1.85" }
//!   include:
//!     - { features: serde, target: aarch64-unknown-linux-musl }   # target: also CARGO_BUILD_TARGET
//!   fail_fast: true                   # default: the first failing cell cancels the others
//! ```
//!
//! The expansion is the cartesian product of the axes in the order they are written, minus every cell
//! an `exclude` entry matches (all its pairs equal), plus every `include` entry that is not already a
//! cell (GitHub Actions' order: exclude, then include). More than [`MAX_CELLS`] cells are refused with
//! the count. A malformed matrix is an error naming the key. No I/O here: the agent expands the matrix
//! after reading the pipeline (`raibid-agent`'s `fan_out`), the queue writes the group and its cells in
//! one script (`queue::groups`), and a cell never expands again: it carries its values in its record.

use crate::job::Status;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

/// Most cells one matrix may expand to.
pub const MAX_CELLS: usize = 64;
/// Most axes of one matrix.
pub const MAX_AXES: usize = 8;
/// Longest value of an axis, in bytes.
pub const MAX_VALUE_LEN: usize = 128;
/// The environment variable prefix of an axis' value: `RAIBID_MATRIX_<AXIS>` (axis name uppercased).
pub const ENV_PREFIX: &str = "RAIBID_MATRIX_";
/// Keys of `matrix:` that are not axes.
pub const RESERVED_KEYS: [&str; 3] = ["include", "exclude", "fail_fast"];
/// Well-known axes and the variable each also sets: `toolchain` → `RUSTUP_TOOLCHAIN` (so it is part of
/// the cache key through the sandboxed `rustc -vV`), `target` → `CARGO_BUILD_TARGET`.
pub const WELL_KNOWN: [(&str, &str); 2] = [
    ("toolchain", "RUSTUP_TOOLCHAIN"),
    ("target", "CARGO_BUILD_TARGET"),
];

/// A parsed `matrix:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Axes in the order written, each with its values.
    pub axes: Vec<(String, Vec<String>)>,
    /// Extra cells.
    pub include: Vec<Vec<MatrixValue>>,
    /// Patterns of cells to leave out.
    pub exclude: Vec<Vec<MatrixValue>>,
    /// The first failing cell cancels the others (default true, as in GitHub Actions).
    pub fail_fast: bool,
}

/// One axis value of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MatrixValue {
    /// Axis name (`features`).
    pub axis: String,
    /// Value (`serde`).
    pub value: String,
}

/// One cell: its axis values, in the order of the axes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cell {
    /// Values.
    pub values: Vec<MatrixValue>,
}

/// A job's place in a matrix, in its record (`Job::matrix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum JobMatrix {
    /// The push's job that read the matrix: the group. Its status is the combination of its cells'.
    Group(MatrixGroup),
    /// One cell of a group.
    Cell(MatrixCell),
}

/// The group record: written with the cells, in one script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MatrixGroup {
    /// The cells' jobs, in expansion order (a retried cell's entry names the newest attempt).
    pub cells: Vec<GroupCell>,
    /// The first failing cell cancels the others.
    pub fail_fast: bool,
}

/// A cell as its group lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupCell {
    /// The cell's job id (its newest attempt).
    pub job: String,
    /// `features=serde, toolchain=stable`.
    pub label: String,
}

/// A cell's record: its group and values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MatrixCell {
    /// The group's (parent) job id.
    pub group: String,
    /// Position in the group, from 0.
    pub index: u32,
    /// Axis values.
    pub values: Vec<MatrixValue>,
}

/// A problem with `matrix:`, naming the key (`matrix.features[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixError(pub String);

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(m: impl Into<String>) -> Result<T, MatrixError> {
    Err(MatrixError(m.into()))
}

/// An axis name: a lowercase letter, then lowercase letters, digits or `_`; at most 32 bytes (its
/// variable, `RAIBID_MATRIX_<AXIS>`, is then always a valid name).
pub fn valid_axis(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 32
        && matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// The variable an axis' value is given in.
pub fn env_name(axis: &str) -> String {
    format!("{ENV_PREFIX}{}", axis.to_ascii_uppercase())
}

fn key_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// A value: a YAML string (a number or boolean is refused, naming the key: `1.80` would read as 1.8).
fn string_value(key: &str, axis: &str, v: &Value) -> Result<String, MatrixError> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => {
            return err(format!(
                "{key}: `{}` is a YAML number or boolean, not a string; quote it as written (e.g. \"1.80\")",
                key_name(v)
            ))
        }
        _ => return err(format!("{key}: must be a string")),
    };
    if s.len() > MAX_VALUE_LEN {
        return err(format!(
            "{key}: {} bytes, the limit is {MAX_VALUE_LEN}",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return err(format!("{key}: contains a control character"));
    }
    if WELL_KNOWN.iter().any(|(a, _)| *a == axis)
        && !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return err(format!(
            "{key}: `{s}` must be A-Z a-z 0-9 . - _ (a toolchain or target name, not a path)"
        ));
    }
    Ok(s)
}

fn entries(key: &str, v: &Value) -> Result<Vec<Vec<MatrixValue>>, MatrixError> {
    let Value::Sequence(items) = v else {
        return err(format!("{key}: must be a list of {{axis: value}} maps"));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let Value::Mapping(m) = item else {
            return err(format!("{k}: must be a map of axis: value"));
        };
        if m.is_empty() {
            return err(format!("{k}: names no axis"));
        }
        let mut vals = Vec::new();
        for (a, val) in m {
            let axis = key_name(a);
            if !valid_axis(&axis) {
                return err(format!(
                    "{k}.{axis}: an axis name is a lowercase letter then a-z 0-9 _ (at most 32)"
                ));
            }
            vals.push(MatrixValue {
                value: string_value(&format!("{k}.{axis}"), &axis, val)?,
                axis,
            });
        }
        out.push(vals);
    }
    Ok(out)
}

impl Matrix {
    /// Parse the value of `matrix:`.
    pub fn parse(v: &Value) -> Result<Matrix, MatrixError> {
        let Value::Mapping(m) = v else {
            return err(
                "matrix: must be a map of axis: [values] (with include, exclude, fail_fast)",
            );
        };
        let mut axes: Vec<(String, Vec<String>)> = Vec::new();
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        let mut fail_fast = true;
        for (k, val) in m {
            let name = key_name(k);
            match name.as_str() {
                "include" => include = entries("matrix.include", val)?,
                "exclude" => exclude = entries("matrix.exclude", val)?,
                "fail_fast" => match val {
                    Value::Bool(b) => fail_fast = *b,
                    _ => return err("matrix.fail_fast: must be true or false"),
                },
                _ => {
                    if !valid_axis(&name) {
                        return err(format!(
                            "matrix.{name}: an axis name is a lowercase letter then a-z 0-9 _ (at most 32)"
                        ));
                    }
                    let Value::Sequence(items) = val else {
                        return err(format!("matrix.{name}: must be a list of string values"));
                    };
                    if items.is_empty() {
                        return err(format!("matrix.{name}: an axis needs at least one value"));
                    }
                    let mut values: Vec<String> = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let s = string_value(&format!("matrix.{name}[{i}]"), &name, item)?;
                        if values.contains(&s) {
                            return err(format!("matrix.{name}[{i}]: `{s}` is listed twice"));
                        }
                        values.push(s);
                    }
                    axes.push((name, values));
                }
            }
        }
        if axes.len() > MAX_AXES {
            return err(format!(
                "matrix: {} axes, the limit is {MAX_AXES}",
                axes.len()
            ));
        }
        for (i, e) in exclude.iter().enumerate() {
            for v in e {
                if !axes.iter().any(|(a, _)| *a == v.axis) {
                    return err(format!(
                        "matrix.exclude[{i}].{}: not an axis of the matrix",
                        v.axis
                    ));
                }
            }
        }
        if axes.is_empty() && include.is_empty() {
            return err("matrix: no axis (name one, e.g. `features: [\"\", serde]`)");
        }
        let mx = Matrix {
            axes,
            include,
            exclude,
            fail_fast,
        };
        mx.expand()?;
        Ok(mx)
    }

    /// The number of cells of the full product, before exclude and include (saturating).
    fn product(&self) -> usize {
        self.axes
            .iter()
            .fold(1usize, |n, (_, v)| n.saturating_mul(v.len()))
    }

    /// The cells, in expansion order; more than [`MAX_CELLS`] is an error with the count.
    pub fn expand(&self) -> Result<Vec<Cell>, MatrixError> {
        let product = if self.axes.is_empty() {
            0
        } else {
            self.product()
        };
        // Refuse before building anything big (exclude can only shrink the product by what it lists).
        if product > MAX_CELLS * 64 {
            return err(format!(
                "matrix: expands to {product} cells, the limit is {MAX_CELLS}"
            ));
        }
        let mut cells: Vec<Vec<MatrixValue>> = if self.axes.is_empty() {
            Vec::new()
        } else {
            vec![Vec::new()]
        };
        for (axis, values) in &self.axes {
            let mut next = Vec::with_capacity(cells.len() * values.len());
            for c in &cells {
                for v in values {
                    let mut c2 = c.clone();
                    c2.push(MatrixValue {
                        axis: axis.clone(),
                        value: v.clone(),
                    });
                    next.push(c2);
                }
            }
            cells = next;
        }
        cells.retain(|c| {
            !self
                .exclude
                .iter()
                .any(|e| e.iter().all(|p| c.iter().any(|v| v == p)))
        });
        for inc in &self.include {
            let same = |c: &Vec<MatrixValue>| {
                c.len() == inc.len() && inc.iter().all(|p| c.iter().any(|v| v == p))
            };
            if !cells.iter().any(same) {
                // In the order of the axes first, then the include's own new axes.
                let mut c: Vec<MatrixValue> = Vec::new();
                for (a, _) in &self.axes {
                    if let Some(v) = inc.iter().find(|v| v.axis == *a) {
                        c.push(v.clone());
                    }
                }
                for v in inc {
                    if !c.iter().any(|x| x.axis == v.axis) {
                        c.push(v.clone());
                    }
                }
                cells.push(c);
            }
        }
        if cells.len() > MAX_CELLS {
            return err(format!(
                "matrix: expands to {} cells, the limit is {MAX_CELLS}",
                cells.len()
            ));
        }
        if cells.is_empty() {
            return err("matrix: every combination is excluded; nothing to run");
        }
        Ok(cells.into_iter().map(|values| Cell { values }).collect())
    }
}

impl Cell {
    /// `features=serde, toolchain=stable`: the cell's name in its status context and the faces.
    pub fn label(&self) -> String {
        label(&self.values)
    }

    /// The variables the cell's steps get: `RAIBID_MATRIX_<AXIS>` for every axis, plus the well-known
    /// ones (`RUSTUP_TOOLCHAIN`, `CARGO_BUILD_TARGET`).
    pub fn env(&self) -> Vec<(String, String)> {
        env(&self.values)
    }
}

/// The label of a cell's values.
pub fn label(values: &[MatrixValue]) -> String {
    values
        .iter()
        .map(|v| format!("{}={}", v.axis, v.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The environment of a cell's values (see [`Cell::env`]).
pub fn env(values: &[MatrixValue]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in values {
        out.push((env_name(&v.axis), v.value.clone()));
        if let Some((_, var)) = WELL_KNOWN.iter().find(|(a, _)| *a == v.axis) {
            out.push(((*var).to_string(), v.value.clone()));
        }
    }
    out
}

/// A short, path-safe suffix naming a cell among its repository's cargo target slots
/// (`features-serde.toolchain-stable`, cut and hashed when long): cells of one branch prefer their own
/// slot and target directory instead of taking turns on the branch's.
pub fn slot_suffix(values: &[MatrixValue]) -> String {
    use sha2::Digest;
    let raw = label(values);
    let mut s: String = values
        .iter()
        .map(|v| format!("{}-{}", v.axis, v.value))
        .collect::<Vec<_>>()
        .join(".")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.len() > 48 {
        s.truncate(40);
        s.push('~');
        s.push_str(&hex::encode(&sha2::Sha256::digest(raw.as_bytes())[..4]));
    }
    s
}

/// The group's status from its cells': not final while a cell is not (queued while every cell is
/// queued, else running); then failed when any cell failed, timed out when any timed out, cancelled when
/// any was cancelled, else succeeded.
pub fn combine(statuses: &[Status]) -> Status {
    if statuses.iter().any(|s| !s.is_final()) {
        if statuses.iter().all(|s| *s == Status::Queued) {
            return Status::Queued;
        }
        return Status::Running;
    }
    for s in [Status::Failed, Status::TimedOut, Status::Cancelled] {
        if statuses.contains(&s) {
            return s;
        }
    }
    Status::Succeeded
}

/// Did a cell of this status fail (for `fail_fast`)?
pub fn is_failure(s: Status) -> bool {
    matches!(s, Status::Failed | Status::TimedOut)
}

/// A group with its cells, as the API, MCP and `raibid-top` show it (`GET /api/v1/groups/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupView {
    /// The group's (parent) job: the push, its clone and config steps, `matrix.cells`.
    pub group: crate::job::Job,
    /// The combined status (`combine`): pending until every cell ended, failed when any failed.
    pub status: Status,
    /// The cells' jobs (their newest attempts), in expansion order; a cell whose record expired is left out.
    pub cells: Vec<crate::job::Job>,
}

/// `matrix:` as `Pipeline::parse` reads it: absent, or parsed and expanded once to check it (an image
/// job has no matrix: it builds one image).
pub fn parse_in_pipeline(v: Option<&Value>, image: bool) -> Result<Option<Matrix>, MatrixError> {
    let Some(v) = v else { return Ok(None) };
    if image {
        return err("matrix: an image job (`image:`) builds one image; a matrix needs `steps:`");
    }
    Matrix::parse(v).map(Some)
}

/// A job's commit-status context from its base (`raibid/ci`): a cell's adds its label,
/// `raibid/ci (features=serde)`.
pub fn context_of(job: &crate::job::Job, base: String) -> String {
    match &job.matrix {
        Some(JobMatrix::Cell(c)) => format!("{base} ({})", label(&c.values)),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Matrix, MatrixError> {
        let v: Value = serde_yaml_ng::from_str(text).unwrap();
        Matrix::parse(&v)
    }

    fn labels(text: &str) -> Vec<String> {
        parse(text)
            .unwrap()
            .expand()
            .unwrap()
            .iter()
            .map(Cell::label)
            .collect()
    }

    #[test]
    fn a_product_in_the_order_written() {
        assert_eq!(
            labels("features: ['', serde, full]\ntoolchain: [stable, '1.85']\n"),
            [
                "features=, toolchain=stable",
                "features=, toolchain=1.85",
                "features=serde, toolchain=stable",
                "features=serde, toolchain=1.85",
                "features=full, toolchain=stable",
                "features=full, toolchain=1.85",
            ]
        );
        assert!(parse("os: [a]\n").unwrap().fail_fast);
        assert!(!parse("os: [a]\nfail_fast: false\n").unwrap().fail_fast);
    }

    #[test]
    fn exclude_then_include() {
        let l = labels(
            "features: [a, b]\ntoolchain: [stable, '1.85']\nexclude:\n  - {features: b, toolchain: '1.85'}\ninclude:\n  - {features: a, toolchain: stable}\n  - {features: c, target: aarch64-unknown-linux-gnu}\n",
        );
        assert_eq!(
            l,
            [
                "features=a, toolchain=stable",
                "features=a, toolchain=1.85",
                "features=b, toolchain=stable",
                "features=c, target=aarch64-unknown-linux-gnu",
            ]
        );
        // A partial exclude removes every cell it matches.
        assert_eq!(
            labels("features: [a, b]\nos: [x, y]\nexclude: [{os: y}]\n"),
            ["features=a, os=x", "features=b, os=x"]
        );
    }

    #[test]
    fn the_cell_limit_is_refused_with_the_count() {
        let e =
            parse("a: [1a, 2a, 3a, 4a, 5a]\nb: [1b, 2b, 3b, 4b, 5b]\nc: [x, y, z]\n").unwrap_err();
        assert!(e.0.contains("75 cells") && e.0.contains("64"), "{e}");
        // 64 is fine.
        let ok =
            parse("a: [a1, a2, a3, a4, a5, a6, a7, a8]\nb: [b1, b2, b3, b4, b5, b6, b7, b8]\n")
                .unwrap();
        assert_eq!(ok.expand().unwrap().len(), 64);
        // A huge product is refused without building it.
        let many: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
        let text = format!(
            "a: [{0}]\nb: [{0}]\nc: [{0}]\nd: [{0}]\ne: [{0}]\n",
            many.join(", ")
        );
        let e = parse(&text).unwrap_err();
        assert!(e.0.contains("102400000 cells"), "{e}");
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let cases = [
            ("Features: [a]\n", "matrix.Features"),
            ("rust-version: [a]\n", "matrix.rust-version"),
            ("features: a\n", "matrix.features"),
            ("features: []\n", "matrix.features"),
            ("toolchain: [stable, 1.80]\n", "matrix.toolchain[1]"),
            ("features: [a, a]\n", "matrix.features[1]"),
            ("toolchain: [../../bin]\n", "matrix.toolchain[0]"),
            ("features: [\"a\\nb\"]\n", "matrix.features[0]"),
            (
                "features: [a]\nexclude: [{feature: a}]\n",
                "matrix.exclude[0].feature",
            ),
            ("features: [a]\ninclude: [x]\n", "matrix.include[0]"),
            ("features: [a]\nfail_fast: yes-please\n", "matrix.fail_fast"),
            (
                "features: [a]\nexclude: [{features: a}]\n",
                "every combination",
            ),
            ("fail_fast: true\n", "no axis"),
            ("[a, b]\n", "matrix:"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.0.contains(key), "{text:?} → {e} should name {key}");
        }
    }

    #[test]
    fn env_and_well_known_axes() {
        let cells =
            parse("features: [serde]\ntoolchain: [nightly]\ntarget: [aarch64-unknown-linux-gnu]\n")
                .unwrap()
                .expand()
                .unwrap();
        let env = cells[0].env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RAIBID_MATRIX_FEATURES"), Some("serde"));
        assert_eq!(get("RAIBID_MATRIX_TOOLCHAIN"), Some("nightly"));
        assert_eq!(get("RUSTUP_TOOLCHAIN"), Some("nightly"));
        assert_eq!(get("CARGO_BUILD_TARGET"), Some("aarch64-unknown-linux-gnu"));
        for (k, _) in &env {
            assert!(
                k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{k}"
            );
        }
    }

    #[test]
    fn slot_suffixes_are_path_safe_and_distinct() {
        let a = slot_suffix(&[MatrixValue {
            axis: "features".into(),
            value: "serde/../x y".into(),
        }]);
        assert!(!a.contains('/') && !a.contains(' '), "{a}");
        let long = |v: &str| {
            slot_suffix(&[MatrixValue {
                axis: "features".into(),
                value: format!("{}{v}", "x".repeat(100)),
            }])
        };
        assert!(long("1").len() <= 49);
        assert_ne!(long("1"), long("2"));
    }

    #[test]
    fn combined_status() {
        use Status::*;
        assert_eq!(combine(&[Queued, Queued]), Queued);
        assert_eq!(combine(&[Succeeded, Running]), Running);
        assert_eq!(combine(&[Failed, Queued]), Running);
        assert_eq!(combine(&[Succeeded, Succeeded]), Succeeded);
        assert_eq!(combine(&[Succeeded, Cancelled, Failed]), Failed);
        assert_eq!(combine(&[Succeeded, TimedOut, Cancelled]), TimedOut);
        assert_eq!(combine(&[Succeeded, Cancelled]), Cancelled);
    }
}
