//! Arbitrary bytes as a push webhook body → `parse_push` must not panic; a `Build` must satisfy the
//! invariants the dispatcher relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raibid_core::webhook::{parse_push, PushOutcome};

fuzz_target!(|data: &[u8]| {
    if let Ok(PushOutcome::Build(p)) = parse_push(data) {
        assert!(
            p.sha.len() == 40 || p.sha.len() == 64,
            "sha length {}: {:?}",
            p.sha.len(),
            p.sha
        );
        assert!(
            p.sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "sha is not lowercase hex: {:?}",
            p.sha
        );
        assert!(p.sha.bytes().any(|b| b != b'0'), "all-zero sha built");
        assert!(p.git_ref.starts_with("refs/heads/"), "ref {:?}", p.git_ref);
        assert!(!p.clone_url.trim().is_empty(), "empty clone_url");
        assert_eq!(p.repo_full_name.split('/').count(), 2, "{:?}", p.repo_full_name);
        if let Some(a) = &p.actor {
            assert!(!a.is_empty(), "empty actor");
        }
    }
});
