//! Reading a git directory's pack indexes without a git process: object counts and look-ups.

use std::path::Path;

pub(crate) fn idx_count(p: &Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p).ok()?;
    let mut head = [0u8; 4];
    f.read_exact(&mut head).ok()?;
    // v2: magic \377tOc, version, then 256 fan-out entries; v1: fan-out right away.
    let off = if head == [0xff, b't', b'O', b'c'] {
        8
    } else {
        0
    };
    f.seek(SeekFrom::Start(off + 255 * 4)).ok()?;
    let mut n = [0u8; 4];
    f.read_exact(&mut n).ok()?;
    Some(u64::from(u32::from_be_bytes(n)))
}

/// Whether the mirror holds object `sha`: a binary search in each pack index (the mirror keeps every
/// fetched object in packs), then a look for a loose object; no git process on the warm path.
pub(crate) fn has_commit(dir: &Path, sha: &str) -> bool {
    let Ok(want) = hex::decode(sha) else {
        return false;
    };
    if want.len() != 20 {
        return false;
    }
    let loose = dir.join("objects").join(&sha[..2]).join(&sha[2..]);
    if loose.exists() {
        return true;
    }
    let Ok(rd) = std::fs::read_dir(dir.join("objects/pack")) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        p.extension().is_some_and(|x| x == "idx")
            && p.with_extension("pack").exists()
            && idx_contains(&p, &want).unwrap_or(false)
    })
}

/// Look `want` up in a version-2 pack index (fan-out table, then sorted 20-byte names), reading
/// only the fan-out entries and the names the binary search visits.
pub(crate) fn idx_contains(p: &Path, want: &[u8]) -> Option<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).ok()?;
    let mut head = [0u8; 8];
    f.read_exact_at(&mut head, 0).ok()?;
    if head[..4] != [0xff, b't', b'O', b'c'] {
        return None;
    }
    let fan = |i: usize| -> Option<u64> {
        let mut n = [0u8; 4];
        f.read_exact_at(&mut n, 8 + i as u64 * 4).ok()?;
        Some(u64::from(u32::from_be_bytes(n)))
    };
    let first = usize::from(*want.first()?);
    let mut lo = if first == 0 { 0 } else { fan(first - 1)? };
    let mut hi = fan(first)?;
    let names = 8 + 256 * 4;
    let mut name = [0u8; 20];
    while lo < hi {
        let mid = (lo + hi) / 2;
        f.read_exact_at(&mut name, names + mid * 20).ok()?;
        match name.as_slice().cmp(want) {
            std::cmp::Ordering::Equal => return Some(true),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    Some(false)
}
