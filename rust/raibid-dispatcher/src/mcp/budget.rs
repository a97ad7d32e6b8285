//! One answer budget for every tool, enforced in one place.
//!
//! A tool answer reaches the client twice: as `structuredContent` and as its text copy (the same JSON,
//! escaped once more inside a JSON string), inside the JSON-RPC envelope. [`fit`] measures exactly that
//! — the bytes the client receives — and, while the answer is over [`WIRE_BUDGET_BYTES`], applies the
//! answer's next degradation step ([`Fit::degrade`]) and measures again. Each answer type's degradation
//! order is documented on its `Fit` impl (in short: page lists, summarise steps, cut tails and long
//! texts) and every step records what it left out in the answer's `cut` and how to get it in `next`.
//!
//! [`bound_result`] is the backstop every tool result passes through (`ServerHandler::call_tool`): a
//! result still over the budget — a tool error with a huge text, an answer type without a degradation
//! left — is replaced by a tool error that says so, so no answer can exceed the budget whatever a tool
//! does.

use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::Json;
use serde::Serialize;

/// The answer budget in tokens: Claude Code refuses a tool result over 25,000 tokens.
pub const TOKEN_BUDGET: usize = 25_000;
/// Bytes per token assumed when turning the token budget into bytes. Tokenizers average ≈ 3.5–4
/// bytes per token on JSON; escaped text is denser in tokens, so the budget assumes 3.
pub const BYTES_PER_TOKEN: usize = 3;
/// The budget of one whole tool result on the wire (both copies and the envelope), in bytes.
pub const WIRE_BUDGET_BYTES: usize = TOKEN_BUDGET * BYTES_PER_TOKEN;
/// The JSON-RPC envelope around a result (`{"jsonrpc":"2.0","id":…,"result":…}`, an SSE `data:` line),
/// with room for a long request id.
pub const ENVELOPE_BYTES: usize = 256;
/// Longest text of a tool error.
pub const MAX_ERROR_BYTES: usize = 4_000;

/// The bytes a client receives for `result` (envelope included).
pub fn wire_bytes(result: &CallToolResult) -> usize {
    serde_json::to_vec(result).map_or(usize::MAX, |v| v.len()) + ENVELOPE_BYTES
}

/// The wire bytes of a structured answer `v`: its JSON, its text copy (the JSON as a JSON string) and
/// the rest of the result object and envelope.
pub fn wire_bytes_of<T: Serialize>(v: &T) -> usize {
    let Ok(json) = serde_json::to_string(v) else {
        return usize::MAX;
    };
    let text = serde_json::to_string(&json).map_or(usize::MAX, |t| t.len());
    // `{"resultType":"complete","content":[{"type":"text","text":…}],"structuredContent":…,"isError":false}`
    json.len() + text + 110 + ENVELOPE_BYTES
}

/// An answer that can be made smaller step by step.
pub trait Fit: Serialize {
    /// Apply the next step of the degradation order. `ratio` (< 1) is the budget over the current
    /// size: a step that drops list items keeps about that share of them. Returns false when nothing
    /// is left to cut.
    fn degrade(&mut self, ratio: f64) -> bool;
}

/// The answer, degraded until it fits the budget on the wire; a tool error when it cannot.
pub fn fit<T: Fit>(mut answer: T) -> Result<Json<T>, String> {
    for _ in 0..200 {
        let size = wire_bytes_of(&answer);
        if size <= WIRE_BUDGET_BYTES {
            return Ok(Json(answer));
        }
        let ratio = WIRE_BUDGET_BYTES as f64 / size as f64;
        if !answer.degrade(ratio) {
            break;
        }
    }
    Err(format!(
        "the answer does not fit the {TOKEN_BUDGET}-token budget even when cut; ask for less (smaller limit or max_lines)"
    ))
}

/// Keep about `ratio` of `n` items (at least one less than `n`, at least `min`).
pub fn keep_share(n: usize, ratio: f64, min: usize) -> usize {
    let k = ((n as f64) * ratio * 0.9).floor() as usize;
    k.min(n.saturating_sub(1)).max(min.min(n))
}

/// `s` cut to at most `max` bytes (at a character boundary) with a marker saying how much was cut;
/// true when it was cut.
pub fn cut_text(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let (head, _) = raibid_core::cargo_messages::truncate_head(s, max);
    let rest = s.len() - head.len();
    *s = format!("{head}…[{rest} more bytes cut]");
    true
}

/// `s` on one line, cut to `max` bytes.
pub fn one_line(s: &str, max: usize) -> String {
    let mut l: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cut_text(&mut l, max);
    l
}

/// Append `what` to an optional `; `-joined note.
pub fn note(cut: &mut Option<String>, what: impl Into<String>) {
    let what = what.into();
    match cut {
        Some(c) if !c.contains(&what) => {
            c.push_str("; ");
            c.push_str(&what);
        }
        Some(_) => {}
        None => *cut = Some(what),
    }
}

/// The backstop: a result over the budget becomes a tool error saying so; a tool error's text is
/// bounded.
pub fn bound_result(tool: &str, mut r: CallToolResult) -> CallToolResult {
    if r.is_error == Some(true) {
        for c in &mut r.content {
            if let Some(t) = c.as_text() {
                if t.text.len() > MAX_ERROR_BYTES {
                    let mut s = t.text.clone();
                    cut_text(&mut s, MAX_ERROR_BYTES);
                    *c = ContentBlock::text(s);
                }
            }
        }
    }
    let size = wire_bytes(&r);
    if size <= WIRE_BUDGET_BYTES {
        return r;
    }
    tracing::error!(tool, size, "tool answer over the budget");
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{tool}: the answer ({size} bytes) is over the {TOKEN_BUDGET}-token budget; ask for less (smaller limit, max_lines or a step)"
    ))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_size_counts_both_copies() {
        let v = serde_json::json!({"a": "\"quoted\""});
        let r = CallToolResult::structured(v.clone());
        // The estimate and the real serialization agree within the fixed part.
        let (a, b) = (wire_bytes_of(&v), wire_bytes(&r));
        assert!(a >= b && a - b < 150, "{a} {b}");
    }

    #[test]
    fn texts_are_cut_with_a_marker() {
        let mut s = "é".repeat(100);
        assert!(cut_text(&mut s, 11));
        assert!(
            s.starts_with("ééééé…[") && s.ends_with("more bytes cut]"),
            "{s}"
        );
        assert_eq!(keep_share(10, 0.5, 1), 4);
        assert_eq!(keep_share(1, 0.1, 1), 1);
        assert_eq!(one_line("a\nb", 10), "a b");
    }
}
