//! One loader for a secret given either as a value (flag or environment variable) or as a file (a
//! mounted Kubernetes secret). The value wins when both are set; a file's content is trimmed of
//! surrounding whitespace (a trailing newline is what `kubectl create secret --from-file` keeps).

use std::path::{Path, PathBuf};

/// Why a secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file is named but cannot be read.
    #[error("reading {what} from {path}: {source}")]
    Read {
        /// What the secret is (for the message), e.g. the environment variable of the file.
        what: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty (after trimming).
    #[error("{what}: {path} is empty")]
    Empty {
        /// What the secret is.
        what: String,
        /// The file.
        path: PathBuf,
    },
}

/// A secret from a value or a file.
#[derive(Debug, Clone, Copy)]
pub struct SecretSource<'a> {
    /// What it is, for error messages (e.g. `RAIBID_GIT_TOKEN_FILE`); never the value.
    pub what: &'a str,
    /// The value given directly, if any.
    pub value: Option<&'a str>,
    /// The file holding it, if any.
    pub file: Option<&'a Path>,
}

impl SecretSource<'_> {
    /// The secret, `None` when neither is set. An empty direct value counts as unset.
    pub fn load(&self) -> Result<Option<String>, SecretError> {
        if let Some(v) = self.value.filter(|v| !v.is_empty()) {
            return Ok(Some(v.to_string()));
        }
        let Some(path) = self.file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            what: self.what.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        let v = text.trim();
        if v.is_empty() {
            return Err(SecretError::Empty {
                what: self.what.to_string(),
                path: path.to_path_buf(),
            });
        }
        Ok(Some(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn value_wins_then_file_then_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "  from-file\n").unwrap();
        let s = |value, file| SecretSource {
            what: "T",
            value,
            file,
        };
        assert_eq!(s(Some("v"), Some(&f)).load().unwrap().as_deref(), Some("v"));
        assert_eq!(
            s(None, Some(&f)).load().unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(
            s(Some(""), Some(&f)).load().unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(s(None, None).load().unwrap(), None);
        let missing = dir.path().join("nope");
        let e = s(None, Some(&missing)).load().unwrap_err().to_string();
        assert!(e.contains("T") && e.contains("nope"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(s(None, Some(&f))
            .load()
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
