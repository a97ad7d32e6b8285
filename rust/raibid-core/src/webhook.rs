//! Forge webhooks: signature verification and push-payload parsing. Pure functions, no I/O.
//!
//! - Gitea: `X-Gitea-Signature` = hex HMAC-SHA256 of the raw body (no prefix); `X-Gitea-Event`,
//!   `X-Gitea-Delivery`.
//! - GitHub: `X-Hub-Signature-256: sha256=<hex>`; `X-GitHub-Event`, `X-GitHub-Delivery`.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Gitea's signature header.
pub const GITEA_SIGNATURE_HEADER: &str = "x-gitea-signature";
/// Gitea's event header.
pub const GITEA_EVENT_HEADER: &str = "x-gitea-event";
/// Gitea's delivery id header.
pub const GITEA_DELIVERY_HEADER: &str = "x-gitea-delivery";
/// GitHub's (and Gitea's secondary) signature header.
pub const GITHUB_SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// GitHub's event header.
pub const GITHUB_EVENT_HEADER: &str = "x-github-event";
/// GitHub's delivery id header.
pub const GITHUB_DELIVERY_HEADER: &str = "x-github-delivery";

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Missing or wrong signature (401). The message never says which part was wrong.
    #[error("missing or invalid webhook signature")]
    BadSignature,
    /// The body is not the JSON it should be (400).
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// Well-formed but makes no sense (422).
    #[error("unprocessable payload: {0}")]
    Unprocessable(String),
}

/// Hex HMAC-SHA256 of `body` with `secret`.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn verify_hex(secret: &[u8], body: &[u8], given_hex: &str) -> Result<(), WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::BadSignature);
    }
    let given = hex::decode(given_hex.trim()).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    if given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature)
    }
}

/// Verify a Gitea `X-Gitea-Signature` header value (constant time).
pub fn verify_gitea(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), WebhookError> {
    verify_hex(secret, body, header.ok_or(WebhookError::BadSignature)?)
}

/// Verify a GitHub `X-Hub-Signature-256: sha256=<hex>` header value (constant time).
pub fn verify_github(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), WebhookError> {
    let h = header.ok_or(WebhookError::BadSignature)?;
    let hexpart = h
        .trim()
        .strip_prefix("sha256=")
        .ok_or(WebhookError::BadSignature)?;
    verify_hex(secret, body, hexpart)
}

/// A push worth building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `refs/heads/<branch>`.
    pub git_ref: String,
    /// The new head commit.
    pub sha: String,
    /// `owner/name`.
    pub repo_full_name: String,
    /// Clone URL.
    pub clone_url: String,
    /// Pusher / sender login.
    pub actor: Option<String>,
}

/// What a push payload means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// A branch moved: build it.
    Build(Push),
    /// A branch deletion, a tag, or a push with no new head: acknowledge and ignore.
    Ignore(&'static str),
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: RawRepo,
    pusher: Option<RawUser>,
    sender: Option<RawUser>,
}

#[derive(Deserialize)]
struct RawRepo {
    full_name: String,
    clone_url: String,
}

#[derive(Deserialize)]
struct RawUser {
    login: Option<String>,
    username: Option<String>,
    name: Option<String>,
}

impl RawUser {
    fn handle(&self) -> Option<String> {
        self.login
            .clone()
            .or_else(|| self.username.clone())
            .or_else(|| self.name.clone())
            .filter(|s| !s.is_empty())
    }
}

fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parse a push payload (Gitea and GitHub share the fields used here).
pub fn parse_push(body: &[u8]) -> Result<PushOutcome, WebhookError> {
    let raw: RawPush =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    if raw.deleted || raw.after == ZERO_SHA || raw.after.bytes().all(|b| b == b'0') {
        return Ok(PushOutcome::Ignore("branch deletion"));
    }
    if !is_sha(&raw.after) {
        return Err(WebhookError::Unprocessable(format!(
            "`after` is not a commit sha: {:?}",
            raw.after.chars().take(80).collect::<String>()
        )));
    }
    if !raw.git_ref.starts_with("refs/heads/") {
        return Ok(PushOutcome::Ignore("not a branch push"));
    }
    if raw.repository.clone_url.trim().is_empty() {
        return Err(WebhookError::Unprocessable(
            "`repository.clone_url` is empty".into(),
        ));
    }
    if raw.repository.full_name.split('/').count() != 2 {
        return Err(WebhookError::Unprocessable(
            "`repository.full_name` is not owner/name".into(),
        ));
    }
    let actor = raw
        .pusher
        .as_ref()
        .and_then(RawUser::handle)
        .or_else(|| raw.sender.as_ref().and_then(RawUser::handle));
    Ok(PushOutcome::Build(Push {
        git_ref: raw.git_ref,
        sha: raw.after.to_ascii_lowercase(),
        repo_full_name: raw.repository.full_name,
        clone_url: raw.repository.clone_url,
        actor,
    }))
}

/// A delivery id is used in a Redis key: accept only what forges send (UUIDs, GitHub GUIDs).
pub fn valid_delivery_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"ref":"refs/heads/main","before":"1111111111111111111111111111111111111111","after":"2222222222222222222222222222222222222222","repository":{"full_name":"o/r","clone_url":"http://gitea/o/r.git"},"pusher":{"login":"alice"}}"#;

    #[test]
    fn gitea_signature() {
        let sig = sign_hex(b"s3cret", BODY);
        assert!(verify_gitea(b"s3cret", BODY, Some(&sig)).is_ok());
        assert_eq!(
            verify_gitea(b"wrong", BODY, Some(&sig)),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_gitea(b"s3cret", b"tampered", Some(&sig)),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_gitea(b"s3cret", BODY, None),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_gitea(b"s3cret", BODY, Some("zz")),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_gitea(b"", BODY, Some(&sign_hex(b"", BODY))),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn github_signature_needs_prefix() {
        let sig = sign_hex(b"k", BODY);
        assert!(verify_github(b"k", BODY, Some(&format!("sha256={sig}"))).is_ok());
        assert_eq!(
            verify_github(b"k", BODY, Some(&sig)),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn known_hmac_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn parses_push_and_ignores_deletes_and_tags() {
        match parse_push(BODY).unwrap() {
            PushOutcome::Build(p) => {
                assert_eq!(p.git_ref, "refs/heads/main");
                assert_eq!(p.sha, "2222222222222222222222222222222222222222");
                assert_eq!(p.repo_full_name, "o/r");
                assert_eq!(p.actor.as_deref(), Some("alice"));
            }
            other => panic!("{other:?}"),
        }
        let del = String::from_utf8_lossy(BODY)
            .replace("2222222222222222222222222222222222222222", ZERO_SHA);
        assert!(matches!(
            parse_push(del.as_bytes()).unwrap(),
            PushOutcome::Ignore(_)
        ));
        let tag = String::from_utf8_lossy(BODY).replace("refs/heads/main", "refs/tags/v1");
        assert!(matches!(
            parse_push(tag.as_bytes()).unwrap(),
            PushOutcome::Ignore(_)
        ));
    }

    #[test]
    fn malformed_and_unprocessable() {
        assert!(matches!(parse_push(b"{"), Err(WebhookError::Malformed(_))));
        assert!(matches!(
            parse_push(b"{\"ref\":1}"),
            Err(WebhookError::Malformed(_))
        ));
        let bad = String::from_utf8_lossy(BODY)
            .replace("2222222222222222222222222222222222222222", "nothex");
        assert!(matches!(
            parse_push(bad.as_bytes()),
            Err(WebhookError::Unprocessable(_))
        ));
    }

    #[test]
    fn delivery_ids() {
        assert!(valid_delivery_id("f7c2a3e0-1c2b-11ef-9f3e-0242ac120002"));
        assert!(!valid_delivery_id("a:b"));
        assert!(!valid_delivery_id(""));
    }
}
