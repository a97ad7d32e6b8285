//! Masking of secret values in log lines.

/// Replaces known secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// Mask these values (empty and very short values are ignored: they would mask everything).
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut secrets: Vec<String> = values.into_iter().filter(|s| s.len() >= 4).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Masker { secrets }
    }

    /// Also mask these values.
    pub fn with(&self, more: impl IntoIterator<Item = String>) -> Masker {
        Masker::new(self.secrets.iter().cloned().chain(more))
    }

    /// Mask a line.
    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masker_masks_longest_first() {
        let m = Masker::new(vec![
            "abcd".to_string(),
            "abcdef".to_string(),
            "x".to_string(),
        ]);
        assert_eq!(m.mask("token=abcdef and abcd, x"), "token=*** and ***, x");
    }
}
