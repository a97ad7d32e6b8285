//! Signature verification: arbitrary secret / body / header must never panic, only a correct HMAC is
//! accepted, and `sign_hex` / `verify_*` agree with each other.
//!
//! Input layout: `[secret_len, header_len, flip_lo, flip_hi, flip_mask, secret.., header.., body..]`
//! (lengths are clamped to what is left; the header is decoded as lossy UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raibid_core::webhook::{sign_hex, verify_gitea, verify_github};

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, tail) = data.split_at(n);
    *data = tail;
    head
}

fn flipped(bytes: &[u8], pos: usize, mask: u8) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[pos] ^= mask;
    v
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let hdr = take(&mut rest, 5);
    let get = |i: usize| hdr.get(i).copied().unwrap_or(0);
    let (secret_len, header_len) = (get(0) as usize, get(1) as usize);
    let flip_pos = usize::from(u16::from_le_bytes([get(2), get(3)]));
    let flip_mask = if get(4) == 0 { 1 } else { get(4) };
    let secret = take(&mut rest, secret_len);
    let header = String::from_utf8_lossy(take(&mut rest, header_len)).into_owned();
    let body = rest;

    // 1. Arbitrary inputs: no panic, and acceptance implies the header *is* the HMAC.
    let sig = sign_hex(secret, body);
    assert_eq!(sig.len(), 64, "sign_hex length");
    assert!(sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if verify_gitea(secret, body, Some(&header)).is_ok() {
        assert!(!secret.is_empty(), "gitea: accepted with an empty secret");
        assert_eq!(header.trim().to_ascii_lowercase(), sig, "gitea: accepted a wrong signature");
    }
    if verify_github(secret, body, Some(&header)).is_ok() {
        assert!(!secret.is_empty(), "github: accepted with an empty secret");
        let hex = header.trim().strip_prefix("sha256=").map(|h| h.trim().to_ascii_lowercase());
        assert_eq!(hex.as_deref(), Some(sig.as_str()), "github: accepted a wrong signature");
    }
    assert!(verify_gitea(secret, body, None).is_err());
    assert!(verify_github(secret, body, None).is_err());

    // 2. Self-consistency: our own signature verifies (non-empty secret), an empty secret never does.
    let gh = format!("sha256={sig}");
    if secret.is_empty() {
        assert!(verify_gitea(secret, body, Some(&sig)).is_err(), "empty secret accepted");
        assert!(verify_github(secret, body, Some(&gh)).is_err(), "empty secret accepted");
        return;
    }
    assert!(verify_gitea(secret, body, Some(&sig)).is_ok(), "gitea: own signature refused");
    assert!(verify_github(secret, body, Some(&gh)).is_ok(), "github: own signature refused");

    // 3. Tampering: flipping a byte of the body (the first, the last and a fuzzer-chosen one, by a
    //    fuzzer-chosen non-zero mask) or of the secret makes verification fail.
    if !body.is_empty() {
        let mut positions = vec![0, body.len() - 1, flip_pos % body.len()];
        positions.sort_unstable();
        positions.dedup();
        for pos in positions {
            let tampered = flipped(body, pos, flip_mask);
            assert!(verify_gitea(secret, &tampered, Some(&sig)).is_err(), "gitea: body[{pos}] flipped, still Ok");
            assert!(verify_github(secret, &tampered, Some(&gh)).is_err(), "github: body[{pos}] flipped, still Ok");
        }
    }
    let wrong_secret = flipped(secret, flip_pos % secret.len(), flip_mask);
    assert!(verify_gitea(&wrong_secret, body, Some(&sig)).is_err(), "gitea: wrong secret accepted");
    assert!(verify_github(&wrong_secret, body, Some(&gh)).is_err(), "github: wrong secret accepted");
});
