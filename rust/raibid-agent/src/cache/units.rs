//! Counting compilation units from cargo's JSON messages (`compiler-artifact` with `fresh`).
//!
//! A unit seen in several steps (built by `cargo build --all-targets`, then reported again by
//! `cargo test`) counts once, as fresh only if it was fresh every time.

use std::collections::HashMap;
use std::sync::Mutex;

/// Units seen in one job.
#[derive(Default)]
pub(crate) struct Units {
    seen: Mutex<HashMap<String, bool>>,
}

impl Units {
    /// Look at one output line; anything but a `compiler-artifact` message is ignored cheaply.
    pub(crate) fn observe(&self, line: &str) {
        if !line.starts_with("{\"reason\":\"compiler-artifact\"") {
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let Some(fresh) = v.get("fresh").and_then(serde_json::Value::as_bool) else {
            return;
        };
        let id = format!(
            "{}|{}|{}|{}",
            v.get("package_id")
                .map(ToString::to_string)
                .unwrap_or_default(),
            v.pointer("/target/name")
                .map(ToString::to_string)
                .unwrap_or_default(),
            v.pointer("/target/kind")
                .map(ToString::to_string)
                .unwrap_or_default(),
            v.pointer("/profile/test")
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        if let Ok(mut m) = self.seen.lock() {
            let e = m.entry(id).or_insert(true);
            *e = *e && fresh;
        }
    }

    /// (fresh, total), or None when cargo reported no units (not a cargo build, or human output).
    pub(crate) fn counts(&self) -> Option<(u64, u64)> {
        let m = self.seen.lock().ok()?;
        if m.is_empty() {
            return None;
        }
        let fresh = m.values().filter(|f| **f).count() as u64;
        Some((fresh, m.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_unit_once() {
        let u = Units::default();
        assert_eq!(u.counts(), None);
        let a = |pkg: &str, fresh: bool| {
            format!(
                r#"{{"reason":"compiler-artifact","package_id":"{pkg}","target":{{"name":"{pkg}","kind":["lib"]}},"profile":{{"test":false}},"fresh":{fresh}}}"#
            )
        };
        u.observe(&a("dep", true));
        u.observe(&a("app", false));
        u.observe(&a("app", true));
        u.observe("   Compiling app v0.1.0");
        u.observe(r#"{"reason":"build-finished","success":true}"#);
        assert_eq!(u.counts(), Some((1, 2)));
    }
}
