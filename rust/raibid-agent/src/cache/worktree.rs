//! Removing what is not the commit from a slot's checkout without a git process: the paths git tracks
//! come from `.git/index` (read here; the format is git's `Documentation/gitformat-index.txt`), and
//! everything else under the work tree (untracked and ignored files, empty directories, nested
//! repositories) is removed, which is what `git clean -ffdx` does after `git checkout -f`.
//!
//! Only the plain index formats are read (versions 2 and 3, no split index, no sparse directories, no
//! skip-worktree entries); anything else is an `Err` and the caller runs `git clean` instead. Nothing
//! here follows a symbolic link: entries are judged by their own type and unlinked as they are.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The tracked paths of the index at `index`: files (and gitlinks), and every directory above them.
#[derive(Debug)]
pub(crate) struct Tracked {
    files: HashSet<Vec<u8>>,
    dirs: HashSet<Vec<u8>>,
}

/// Read an index file. `Err` names what this reader does not handle.
pub(crate) fn read_index(bytes: &[u8]) -> Result<Tracked, String> {
    let be32 = |at: usize| -> Result<u32, String> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "index truncated".to_string())
    };
    if bytes.get(..4) != Some(b"DIRC") {
        return Err("not an index file".into());
    }
    let version = be32(4)?;
    if version != 2 && version != 3 {
        return Err(format!("index version {version}"));
    }
    let count = be32(8)? as usize;
    // 20 bytes of checksum at the end; nothing may overlap it.
    let end = bytes
        .len()
        .checked_sub(20)
        .ok_or_else(|| "index truncated".to_string())?;
    let mut files = HashSet::with_capacity(count);
    let mut dirs = HashSet::new();
    let mut at = 12;
    for _ in 0..count {
        // ctime, mtime (8 each), dev, ino, mode, uid, gid, size (4 each), object id (20), flags (2).
        let mode = be32(at + 24)?;
        let flags = bytes
            .get(at + 60..at + 62)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "index truncated".to_string())?;
        let mut name_at = at + 62;
        if flags & 0x4000 != 0 {
            // Extended flags (version 3): skip-worktree or intent-to-add; not a plain checkout.
            return Err("index entries with extended flags".into());
        }
        if flags & 0x3000 != 0 {
            return Err("index with merge stages".into());
        }
        if mode & 0o170000 == 0o040000 {
            return Err("sparse index".into());
        }
        let len = usize::from(flags & 0x0fff);
        let name = if len < 0x0fff {
            bytes.get(name_at..name_at + len)
        } else {
            bytes
                .get(name_at..end)
                .and_then(|r| r.iter().position(|b| *b == 0))
                .and_then(|n| bytes.get(name_at..name_at + n))
        }
        .ok_or_else(|| "index truncated".to_string())?;
        if name.is_empty()
            || name.first() == Some(&b'/')
            || name
                .split(|b| *b == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err("index path is not a plain relative path".into());
        }
        name_at += name.len();
        // Entry length: 62 + name + 1..8 NUL bytes, padded to a multiple of 8.
        let entry = (name_at - at + 8) & !7;
        at += entry;
        if at > end {
            return Err("index truncated".into());
        }
        let mut p = name.len();
        while let Some(i) = name[..p].iter().rposition(|b| *b == b'/') {
            if !dirs.insert(name[..i].to_vec()) {
                break;
            }
            p = i;
        }
        files.insert(name.to_vec());
    }
    // Extensions: signature (4) + size (4) + data. A split index keeps entries elsewhere.
    while at + 8 <= end {
        let sig = &bytes[at..at + 4];
        if sig == b"link" || sig == b"sdir" {
            return Err(format!("index extension {}", String::from_utf8_lossy(sig)));
        }
        at += 8 + be32(at + 4)? as usize;
    }
    Ok(Tracked { files, dirs })
}

/// Remove from the work tree at `root` every path the index does not track (but `.git`). Returns how
/// many paths were removed (a directory counts once).
pub(crate) fn clean(root: &Path) -> Result<usize, String> {
    let index = std::fs::read(root.join(".git/index")).map_err(|e| format!("index: {e}"))?;
    let t = read_index(&index)?;
    let mut removed = 0;
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(OsStr::from_bytes(&rel));
        let rd = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in rd {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name();
            if rel.is_empty() && name == ".git" {
                continue;
            }
            let mut p = rel.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name.as_bytes());
            // The entry's own type (d_type / lstat): a symbolic link is never followed.
            let ft = e.file_type().map_err(|e| e.to_string())?;
            if t.files.contains(&p) {
                continue;
            }
            if ft.is_dir() && t.dirs.contains(&p) {
                stack.push(p);
                continue;
            }
            let path = e.path();
            let r = if ft.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.map_err(|e| format!("{}: {e}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if rel == ".git" {
                    continue;
                }
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    v.push(format!("{rel}/"));
                    stack.push(p);
                } else {
                    v.push(rel);
                }
            }
        }
        v.sort();
        v
    }

    /// The same work tree cleaned by `git clean -ffdx` and in process ends up identical, for a tree
    /// with every kind of leftover: untracked and ignored files, an untracked directory inside a
    /// tracked one, an empty directory, a nested repository, symbolic links (to a file outside the
    /// tree, which must survive, and to a tracked directory), long and non-ASCII names.
    #[test]
    fn removes_what_git_clean_ffdx_removes_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "k").unwrap();
        let long = "l".repeat(250);
        let make = |d: &Path| {
            std::fs::create_dir_all(d.join("src/deep/er")).unwrap();
            std::fs::write(d.join("Cargo.toml"), "[package]\n").unwrap();
            std::fs::write(d.join(".gitignore"), "ignored.txt\n/build/\n").unwrap();
            std::fs::write(d.join("src/lib.rs"), "").unwrap();
            std::fs::write(d.join("src/deep/er/x.rs"), "").unwrap();
            std::fs::write(d.join(format!("src/{long}")), "").unwrap();
            std::fs::write(d.join("src/ünï.rs"), "").unwrap();
            std::os::unix::fs::symlink("lib.rs", d.join("src/tracked-link")).unwrap();
            git(d, &["init", "-q"]);
            git(d, &["add", "-A"]);
            git(d, &["commit", "-q", "-m", "x"]);
            // Leftovers.
            std::fs::write(d.join("ignored.txt"), "i").unwrap();
            std::fs::create_dir_all(d.join("build/out")).unwrap();
            std::fs::write(d.join("build/out/o"), "o").unwrap();
            std::fs::write(d.join("src/deep/untracked.rs"), "u").unwrap();
            std::fs::create_dir_all(d.join("src/deep/er/newdir/empty")).unwrap();
            std::fs::create_dir_all(d.join("empty")).unwrap();
            std::fs::create_dir_all(d.join("nested")).unwrap();
            git(&d.join("nested"), &["init", "-q"]);
            std::os::unix::fs::symlink(&outside, d.join("src/link-out")).unwrap();
            std::os::unix::fs::symlink(d.join("src"), d.join("link-src")).unwrap();
        };
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        make(&a);
        make(&b);
        git(&a, &["clean", "-q", "-ffdx"]);
        let n = clean(&b).unwrap();
        assert_eq!(listing(&a), listing(&b));
        assert_eq!(n, 8, "{:?}", listing(&b));
        assert!(
            outside.join("keep").exists(),
            "a link's target is never touched"
        );
        assert!(b.join("src/lib.rs").exists() && b.join("src/tracked-link").exists());
        assert_eq!(clean(&b).unwrap(), 0);
    }

    #[test]
    fn unknown_index_formats_are_refused_not_guessed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("a"), "a").unwrap();
        git(d, &["init", "-q"]);
        git(d, &["add", "a"]);
        let idx = std::fs::read(d.join(".git/index")).unwrap();
        assert!(read_index(&idx).is_ok());
        git(d, &["update-index", "--index-version", "4"]);
        let idx = std::fs::read(d.join(".git/index")).unwrap();
        assert!(read_index(&idx).unwrap_err().contains("version 4"));
        git(d, &["update-index", "--index-version", "3"]);
        git(d, &["update-index", "--skip-worktree", "a"]);
        let idx = std::fs::read(d.join(".git/index")).unwrap();
        assert!(read_index(&idx).unwrap_err().contains("extended"));
        git(
            d,
            &["update-index", "--no-skip-worktree", "a", "--split-index"],
        );
        let idx = std::fs::read(d.join(".git/index")).unwrap();
        assert!(read_index(&idx).is_err());
        assert!(read_index(b"DIRC\0\0\0\x02\0\0\0\x05").is_err());
        assert!(read_index(b"").is_err());
    }
}
