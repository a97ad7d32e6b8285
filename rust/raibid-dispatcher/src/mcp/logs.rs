//! Bounded windows of a job's log for `get_logs`: the tail of one step, a line range, or a regex search
//! with context. Every answer stays under [`ANSWER_BUDGET_BYTES`] and says what was cut and which call
//! continues. Line numbers `n` count every line of the job's log from 1 (all steps).
//!
//! A `cursor` (`<stream entry id>@<line number>`) continues a range or a search exactly where the previous
//! answer stopped without rescanning the log; `from_line` alone scans from the start to find the line.

use raibid_core::contract;
use raibid_core::queue::{Queue, QueueError};
use redis::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Size budget of the log lines in one answer as they go over the wire: each line counted twice, in
/// the structured content and in its text copy (where its JSON is escaped once more). The rest of the
/// answer fits in what is left of the answer budget (`budget::WIRE_BUDGET_BYTES`, 75,000 bytes ≈ 25k
/// tokens); `budget::fit` checks the whole answer.
pub const ANSWER_BUDGET_BYTES: usize = 64_000;
/// Longest line returned; longer ones are cut with a marker.
pub const MAX_LINE_BYTES: usize = 2_000;
/// Default tail length.
pub const DEFAULT_TAIL: u32 = 200;
/// Most lines one call may ask for.
pub const MAX_LINES: u32 = 2_000;

/// `get_logs` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Job id (26 characters, from submit_job or list_jobs).
    pub job_id: String,
    /// Only lines of this step (`clone`, `patch`, `config`, `build`, `test`, ...). Without `from_line`,
    /// `search` or `cursor`: the tail of this step. Default: the failed step, or the last step.
    #[serde(default)]
    pub step: Option<String>,
    /// Start at this 1-based line number of the whole log (a line range instead of the tail).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub from_line: Option<u64>,
    /// Lines to return (default 200, at most 2000); the size budget may cut earlier.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2000))]
    pub max_lines: Option<u32>,
    /// A regular expression (Rust regex syntax) to search the log for, e.g. `error\[E\d+\]|panicked`.
    #[serde(default)]
    pub search: Option<String>,
    /// Lines of context around each search match (default 2, at most 10).
    #[serde(default)]
    #[schemars(range(max = 10))]
    pub context: Option<u32>,
    /// Most search matches to return (default 50, at most 500).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub max_matches: Option<u32>,
    /// `next.cursor` of a previous answer: continue exactly where it stopped.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Line {
    /// 1-based line number in the job's log.
    pub n: u64,
    /// Step that printed it.
    pub step: String,
    /// The text (cut at 2,000 bytes).
    pub text: String,
    /// True for a search match (absent for context lines and non-search answers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hit: bool,
}

/// How to ask for more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NextCall {
    /// Pass as `from_line` (with the same `step` / `search`).
    pub from_line: u64,
    /// Pass as `cursor` to continue without rescanning.
    pub cursor: Option<String>,
    /// In words.
    pub hint: String,
}

/// `get_logs` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogsAnswer {
    /// Job id.
    pub job_id: String,
    /// Job status.
    pub status: String,
    /// `tail`, `range` or `search`.
    pub mode: String,
    /// Step filter applied.
    pub step: Option<String>,
    /// The lines, in log order.
    pub lines: Vec<Line>,
    /// Lines in the job's log (all steps).
    pub total_lines: u64,
    /// Search matches returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<u64>,
    /// Lines looked at to answer.
    pub scanned_lines: u64,
    /// The log reached its size cap while the job ran; later lines were never stored.
    pub log_truncated: bool,
    /// What this answer left out, when anything.
    pub cut: Option<String>,
    /// The call that continues; absent when nothing is left.
    pub next: Option<NextCall>,
}

/// A parsed `cursor`.
pub fn parse_cursor(c: &str) -> Option<(String, u64)> {
    let (seq, n) = c.split_once('@')?;
    let mut parts = seq.split('-');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !(ok(parts.next()) && ok(parts.next()) && parts.next().is_none()) {
        return None;
    }
    Some((seq.to_string(), n.parse().ok()?))
}

fn cut_line(s: &str) -> String {
    if s.len() <= MAX_LINE_BYTES {
        return s.to_string();
    }
    let (head, _) = raibid_core::cargo_messages::truncate_head(s, MAX_LINE_BYTES);
    format!("{head}…[line cut: {} more bytes]", s.len() - head.len())
}

/// Wire bytes of one line: its JSON (with a separator) plus that JSON escaped again in the text copy.
fn cost(l: &Line) -> usize {
    let Ok(j) = serde_json::to_string(l) else {
        return 14 * l.text.len() + 200;
    };
    let t = serde_json::to_string(&j).map_or(2 * j.len() + 2, |t| t.len());
    j.len() + t
}

async fn xlen(queue: &Queue, id: &str) -> Result<u64, QueueError> {
    let mut con = queue.redis();
    Ok(redis::cmd("XLEN")
        .arg(contract::job_log_key(id))
        .query_async(&mut con)
        .await?)
}

/// One batch of log entries: the ids and the lines each in one buffer, the steps as runs.
#[derive(Debug, Default)]
struct Batch {
    /// Entry ids, concatenated.
    ids: String,
    /// Offsets of each id in `ids` (start, end).
    id_at: Vec<(usize, usize)>,
    /// The lines, concatenated.
    text: Vec<u8>,
    /// Offsets of each line in `text` (start, end).
    text_at: Vec<(usize, usize)>,
    /// Step names, and the index into them of each line.
    steps: Vec<String>,
    step_of: Vec<u32>,
}

impl Batch {
    fn len(&self) -> usize {
        self.text_at.len()
    }
    fn is_empty(&self) -> bool {
        self.text_at.is_empty()
    }
    fn id(&self, i: usize) -> &str {
        let (a, b) = self.id_at[i];
        &self.ids[a..b]
    }
    fn bytes(&self, i: usize) -> &[u8] {
        let (a, b) = self.text_at[i];
        &self.text[a..b]
    }
    fn step(&self, i: usize) -> &str {
        &self.steps[self.step_of[i] as usize]
    }
    /// True when the stream has nothing beyond this batch (asked for `count`).
    fn is_last(&self, count: usize) -> bool {
        self.len() < count
    }
    /// `(id, n)` of the line before line `i` (numbered `base + i + 1`), `prev` for `i == 0`.
    fn before(&self, i: usize, base: u64, prev: &Option<(String, u64)>) -> Option<(String, u64)> {
        if i == 0 {
            prev.clone()
        } else {
            Some((self.id(i - 1).to_string(), base + i as u64))
        }
    }
    /// Line `i` as an answer line numbered `n`.
    fn line(&self, i: usize, n: u64, hit: bool) -> Line {
        Line {
            n,
            step: self.step(i).to_string(),
            text: cut_line(&String::from_utf8_lossy(self.bytes(i))),
            hit,
        }
    }
}

fn bad_reply(what: &str) -> QueueError {
    QueueError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "log stream",
        what.to_string(),
    )))
}

/// A batch from an `XRANGE` / `XREVRANGE` reply (entries `[id, [field, value, ...]]`): ids and lines
/// are appended to two buffers and steps kept as runs, so nothing is allocated per line.
fn parse_entries(v: Value) -> Result<Batch, QueueError> {
    let Value::Array(entries) = v else {
        return Err(bad_reply("not an array"));
    };
    let mut b = Batch::default();
    for e in entries {
        let Value::Array(pair) = e else {
            return Err(bad_reply("an entry is not an array"));
        };
        let (id, fields) = match pair.as_slice() {
            [Value::BulkString(id), Value::Array(fields)] => (id, fields),
            _ => return Err(bad_reply("an entry is not [id, fields]")),
        };
        let id = std::str::from_utf8(id).map_err(|_| bad_reply("an entry id is not text"))?;
        let at = b.ids.len();
        b.ids.push_str(id);
        b.id_at.push((at, b.ids.len()));
        let (mut step, mut line): (&[u8], &[u8]) = (b"", b"");
        for kv in fields.chunks(2) {
            if let [Value::BulkString(k), Value::BulkString(v)] = kv {
                match k.as_slice() {
                    b"step" => step = v,
                    b"line" => line = v,
                    _ => {}
                }
            }
        }
        let at = b.text.len();
        b.text.extend_from_slice(line);
        b.text_at.push((at, b.text.len()));
        if b.steps.last().is_none_or(|s| s.as_bytes() != step) {
            b.steps.push(String::from_utf8_lossy(step).into_owned());
        }
        let idx = u32::try_from(b.steps.len() - 1).map_err(|_| bad_reply("too many steps"))?;
        b.step_of.push(idx);
    }
    Ok(b)
}

/// Most entries one batch reads: the scan starts small (an answer that fills early reads little) and
/// grows to this. Redis serves nobody else while it writes one reply, so a batch is kept to a few
/// milliseconds of its time (docs/benchmarks.md). A full scan of a 10 MiB log (145,011 lines) takes 19
/// round trips.
pub const BATCH_MAX_LINES: usize = 8_192;
const BATCH_FIRST_LINES: usize = 2_000;

/// Read one batch: oldest first after `from` (exclusive), or newest first before `from` (exclusive).
async fn read_batch(
    con: &mut redis::aio::ConnectionManager,
    key: &str,
    from: Option<&str>,
    rev: bool,
    count: usize,
) -> Result<Batch, QueueError> {
    let bound = from.map_or_else(
        || if rev { "+" } else { "-" }.to_string(),
        |s| format!("({s}"),
    );
    let (cmd, end) = if rev {
        ("XREVRANGE", "-")
    } else {
        ("XRANGE", "+")
    };
    let v: Value = redis::cmd(cmd)
        .arg(key)
        .arg(bound)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await?;
    parse_entries(v)
}

/// The last lines of `step`, reading the log backwards. Returns (lines oldest first, scanned).
async fn tail(
    queue: &Queue,
    id: &str,
    step: &str,
    want: usize,
    total: u64,
) -> Result<(Vec<Line>, u64, bool), QueueError> {
    let mut con = queue.redis();
    let key = contract::job_log_key(id);
    let mut before: Option<String> = None;
    let mut scanned: u64 = 0;
    let mut got: Vec<Line> = Vec::new();
    let mut more_before = false;
    let mut count = (want + 16).min(BATCH_MAX_LINES);
    'outer: loop {
        let b = read_batch(&mut con, &key, before.as_deref(), true, count).await?;
        if b.is_empty() {
            break;
        }
        for i in 0..b.len() {
            let n = total.saturating_sub(scanned);
            scanned += 1;
            if b.step(i) == step {
                if got.len() >= want {
                    more_before = true;
                    break 'outer;
                }
                got.push(b.line(i, n, false));
            } else if !got.is_empty() {
                // Steps run one after the other: an earlier step's line means this step began here.
                break 'outer;
            }
        }
        if b.is_last(count) {
            break;
        }
        before = Some(b.id(b.len() - 1).to_string());
        count = (count * 4).min(BATCH_MAX_LINES);
    }
    got.reverse();
    Ok((got, scanned, more_before))
}

/// Answer a `get_logs` query for a job in `status` whose failed/current step is `job_step`.
pub async fn answer(
    queue: &Queue,
    q: &LogsQuery,
    status: &str,
    job_step: Option<&str>,
) -> Result<Result<LogsAnswer, String>, QueueError> {
    let id = q.job_id.as_str();
    let max_lines = q.max_lines.unwrap_or(DEFAULT_TAIL);
    if !(1..=MAX_LINES).contains(&max_lines) {
        return Ok(Err(format!("max_lines: must be between 1 and {MAX_LINES}")));
    }
    let context = q.context.unwrap_or(2);
    if context > 10 {
        return Ok(Err("context: at most 10 lines".into()));
    }
    let max_matches = q.max_matches.unwrap_or(50);
    if !(1..=500).contains(&max_matches) {
        return Ok(Err("max_matches: must be between 1 and 500".into()));
    }
    if q.from_line == Some(0) {
        return Ok(Err("from_line: line numbers start at 1".into()));
    }
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => match parse_cursor(c) {
            Some(x) => Some(x),
            None => return Ok(Err("cursor: not a cursor returned by get_logs".into())),
        },
        None => None,
    };
    let regex = match q.search.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match regex::bytes::RegexBuilder::new(s)
            .size_limit(1 << 20)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                return Ok(Err(format!(
                    "search: not a valid regular expression: {}",
                    e.to_string().lines().last().unwrap_or("")
                )))
            }
        },
        None => None,
    };
    let step = q.step.clone().filter(|s| !s.is_empty());
    let total = xlen(queue, id).await?;
    let truncated = queue.log_truncated(id).await?;
    let mut ans = LogsAnswer {
        job_id: id.to_string(),
        status: status.to_string(),
        mode: String::new(),
        step: step.clone(),
        lines: Vec::new(),
        total_lines: total,
        matches: None,
        scanned_lines: 0,
        log_truncated: truncated,
        cut: None,
        next: None,
    };
    // Tail: the default.
    if regex.is_none() && q.from_line.is_none() && cursor.is_none() {
        ans.mode = "tail".into();
        let target = match step.clone().or_else(|| job_step.map(str::to_string)) {
            Some(s) => s,
            None => {
                // The last line's step.
                let mut con = queue.redis();
                let key = contract::job_log_key(id);
                let b = read_batch(&mut con, &key, None, true, 1).await?;
                match (!b.is_empty()).then(|| b.step(0).to_string()) {
                    Some(s) => s,
                    None => {
                        ans.cut = Some("the log is empty".into());
                        return Ok(Ok(ans));
                    }
                }
            }
        };
        ans.step = Some(target.clone());
        let (mut lines, scanned, more_before) =
            tail(queue, id, &target, max_lines as usize, total).await?;
        ans.scanned_lines = scanned;
        // Over budget: keep the newest lines.
        let mut used = 0;
        let mut keep_from = lines.len();
        for (i, l) in lines.iter().enumerate().rev() {
            let c = cost(l);
            if used + c > ANSWER_BUDGET_BYTES {
                break;
            }
            used += c;
            keep_from = i;
        }
        let dropped = keep_from;
        lines.drain(..keep_from);
        let first = lines.first().map(|l| l.n);
        if dropped > 0 || more_before {
            ans.cut = Some(format!(
                "only the last {} line(s) of step `{target}`{}",
                lines.len(),
                if dropped > 0 {
                    format!(" ({dropped} more cut by the {ANSWER_BUDGET_BYTES}-byte budget)")
                } else {
                    String::new()
                }
            ));
            if let Some(f) = first {
                let from = f.saturating_sub(u64::from(max_lines)).max(1);
                ans.next = Some(NextCall {
                    from_line: from,
                    cursor: None,
                    hint: format!(
                        "earlier lines of `{target}`: get_logs with step=`{target}`, from_line={from}, max_lines={max_lines}; or search with a regex"
                    ),
                });
            }
        }
        ans.lines = lines;
        return Ok(Ok(ans));
    }
    // Range or search: scan forwards, batch by batch. Nothing is allocated per line scanned: a line
    // becomes an answer `Line` only when it is returned (or kept as context across a batch boundary).
    ans.mode = if regex.is_some() { "search" } else { "range" }.into();
    let (mut after, mut n, skip_to) = match (&cursor, q.from_line) {
        (Some((seq, line)), _) => (Some(seq.clone()), *line, None),
        (None, Some(f)) => (None, 0, Some(f)),
        (None, None) => (None, 0, None),
    };
    let mut con = queue.redis();
    let key = contract::job_log_key(id);
    let context = context as usize;
    let mut used = 0usize;
    let mut matches = 0u64;
    // Context candidates before the next match: owned lines carried over from earlier batches, then
    // indices into the current batch; together at most `context`, oldest first.
    let mut carry: std::collections::VecDeque<Line> = std::collections::VecDeque::new();
    let mut recent: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut after_left = 0usize;
    let mut last_emitted: u64 = 0;
    let mut stop: Option<String> = None;
    // The line before the one the scan stopped at: where the next call continues.
    let mut last_seen: Option<(String, u64)> = after.clone().map(|a| (a, n));
    let mut count = BATCH_FIRST_LINES;
    'scan: loop {
        let b = read_batch(&mut con, &key, after.as_deref(), false, count).await?;
        if b.is_empty() {
            break;
        }
        let base = n;
        for i in 0..b.len() {
            n += 1;
            ans.scanned_lines += 1;
            if skip_to.is_some_and(|s| n < s) || step.as_ref().is_some_and(|s| s != b.step(i)) {
                continue;
            }
            match &regex {
                None => {
                    let line = b.line(i, n, false);
                    let c = cost(&line);
                    if ans.lines.len() >= max_lines as usize || used + c > ANSWER_BUDGET_BYTES {
                        stop = Some(if ans.lines.len() >= max_lines as usize {
                            format!("stopped after max_lines={max_lines}")
                        } else {
                            format!("stopped at the {ANSWER_BUDGET_BYTES}-byte budget")
                        });
                        last_seen = b.before(i, base, &last_seen);
                        break 'scan;
                    }
                    used += c;
                    ans.lines.push(line);
                }
                Some(re) => {
                    if re.is_match(b.bytes(i)) {
                        if matches >= u64::from(max_matches) {
                            stop = Some(format!("stopped after max_matches={max_matches}"));
                            last_seen = b.before(i, base, &last_seen);
                            break 'scan;
                        }
                        let mut block: Vec<Line> =
                            carry.drain(..).filter(|l| l.n > last_emitted).collect();
                        block.extend(
                            recent
                                .drain(..)
                                .map(|j| b.line(j, base + j as u64 + 1, false))
                                .filter(|l| l.n > last_emitted),
                        );
                        block.push(b.line(i, n, true));
                        let c: usize = block.iter().map(cost).sum();
                        if used + c > ANSWER_BUDGET_BYTES {
                            stop =
                                Some(format!("stopped at the {ANSWER_BUDGET_BYTES}-byte budget"));
                            last_seen = b.before(i, base, &last_seen);
                            break 'scan;
                        }
                        used += c;
                        matches += 1;
                        last_emitted = n;
                        ans.lines.extend(block);
                        after_left = context;
                    } else if after_left > 0 {
                        let line = b.line(i, n, false);
                        let c = cost(&line);
                        if used + c > ANSWER_BUDGET_BYTES {
                            stop =
                                Some(format!("stopped at the {ANSWER_BUDGET_BYTES}-byte budget"));
                            last_seen = b.before(i, base, &last_seen);
                            break 'scan;
                        }
                        used += c;
                        after_left -= 1;
                        last_emitted = n;
                        ans.lines.push(line);
                    } else if context > 0 {
                        recent.push_back(i);
                        if carry.len() + recent.len() > context && carry.pop_front().is_none() {
                            recent.pop_front();
                        }
                    }
                }
            }
        }
        let last = b.len() - 1;
        // Context candidates outlive their batch as owned lines.
        carry.extend(
            recent
                .drain(..)
                .map(|j| b.line(j, base + j as u64 + 1, false)),
        );
        last_seen = Some((b.id(last).to_string(), n));
        after = Some(b.id(last).to_string());
        if b.is_last(count) {
            break;
        }
        count = (count * 4).min(BATCH_MAX_LINES);
    }
    if regex.is_some() {
        ans.matches = Some(matches);
    }
    if let Some(why) = stop {
        let (seq, line) = last_seen.unwrap_or_else(|| (String::from("0-0"), 0));
        ans.cut = Some(format!(
            "{why}; {} more line(s) in the log after line {line}",
            total.saturating_sub(line)
        ));
        let what = if regex.is_some() { "search" } else { "range" };
        ans.next = Some(NextCall {
            from_line: line + 1,
            cursor: Some(format!("{seq}@{line}")),
            hint: format!(
                "continue the {what}: get_logs with the same arguments and cursor=`{seq}@{line}` (or from_line={})",
                line + 1
            ),
        });
    }
    Ok(Ok(ans))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(
            parse_cursor("1700000000000-3@1201"),
            Some(("1700000000000-3".into(), 1201))
        );
        assert_eq!(parse_cursor("1-2"), None);
        assert_eq!(parse_cursor("x-1@3"), None);
        assert_eq!(parse_cursor("1-1@-3"), None);
    }

    #[test]
    fn long_lines_are_cut() {
        let s = "é".repeat(3000);
        let c = cut_line(&s);
        assert!(c.len() < MAX_LINE_BYTES + 64);
        assert!(c.contains("line cut"));
    }
}
