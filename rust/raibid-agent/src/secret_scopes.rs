//! Which repositories may receive which `RAIBID_SECRET_<NAME>` (`RAIBID_SECRET_SCOPES`:
//! `NAME=glob|glob,...`). A glob matches the repository URL *normalised* (`normalise_url`): lower-case
//! scheme and host, percent-encoded dots decoded, `.` and `..` segments resolved — so
//! `https://gitea/acme/../evil/x.git` is `https://gitea/evil/x.git` and does not get `acme/*`'s secrets.
//! (The dispatcher refuses dot segments at submit anyway; this holds for jobs that got in otherwise.)

use anyhow::bail;

/// Which repositories may receive which `RAIBID_SECRET_<NAME>` (`NAME=glob|glob,...`).
#[derive(Debug, Clone, Default)]
pub struct SecretScopes {
    scopes: Vec<(String, Vec<String>)>,
}

impl SecretScopes {
    /// Parse the scopes; entries are separated by commas or newlines, `#` starts a comment line.
    pub fn parse(text: &str) -> anyhow::Result<SecretScopes> {
        let mut scopes = Vec::new();
        for entry in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
        {
            let Some((name, globs)) = entry.split_once('=') else {
                bail!(
                    "{}: `{entry}` is not NAME=glob",
                    raibid_core::contract::env::SECRET_SCOPES
                );
            };
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!(
                    "{}: `{name}` is not a secret name",
                    raibid_core::contract::env::SECRET_SCOPES
                );
            }
            let globs: Vec<String> = globs
                .split('|')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect();
            scopes.push((name.to_string(), globs));
        }
        Ok(SecretScopes { scopes })
    }

    /// May a job of `repo_url` receive secret `name`? The globs match the normalised URL.
    pub fn allows(&self, name: &str, repo_url: &str) -> bool {
        let url = normalise_url(repo_url);
        self.scopes
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, g)| g.iter())
            .any(|g| glob_match(normalise_url(g).as_bytes(), url.as_bytes()))
    }
}

/// A repository URL as it is matched: scheme and host (the authority, without user information)
/// lower case, `%2e`/`%2E` decoded to `.`, and `.` / `..` path segments resolved (a `..` never climbs
/// above the root). `scheme://authority/path` and scp-like `host:path` forms; anything else only has
/// its dot segments resolved.
pub fn normalise_url(raw: &str) -> String {
    let (prefix, path) = match raw.find("://") {
        Some(i) => {
            let rest = &raw[i + 3..];
            let (auth, path) = match rest.find('/') {
                Some(p) => (&rest[..p], &rest[p..]),
                None => (rest, ""),
            };
            let host = auth.rsplit('@').next().unwrap_or(auth);
            let user = &auth[..auth.len() - host.len()];
            (
                format!(
                    "{}://{user}{}",
                    raw[..i].to_ascii_lowercase(),
                    host.to_ascii_lowercase()
                ),
                path,
            )
        }
        None => match raw.split_once(':') {
            Some((left, p)) if !left.contains('/') && !left.is_empty() => {
                let host = left.rsplit('@').next().unwrap_or(left);
                let user = &left[..left.len() - host.len()];
                (format!("{user}{}:", host.to_ascii_lowercase()), p)
            }
            _ => (String::new(), raw),
        },
    };
    let (path, tail) = match path.find(['?', '#']) {
        Some(q) => (&path[..q], &path[q..]),
        None => (path, ""),
    };
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let absolute = decoded.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = decoded.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            "" if i == 0 => {}
            s => out.push(s),
        }
    }
    // A trailing `.`/`..` leaves a directory: keep the trailing slash like URL resolution does.
    let trailing = matches!(segs.last(), Some(&".") | Some(&"..")) && !out.is_empty();
    let mut p = out.join("/");
    if absolute {
        p.insert(0, '/');
    }
    if trailing {
        p.push('/');
    }
    format!("{prefix}{p}{tail}")
}

/// `*` matches any run of bytes; everything else literally.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scopes_match_repository_globs_and_default_to_nothing() {
        let s = SecretScopes::parse(
            "DEPLOY=https://gitea.local/acme/*|file:///srv/x\n# c\nOTHER=*/tools.git",
        )
        .unwrap();
        assert!(s.allows("DEPLOY", "https://gitea.local/acme/web.git"));
        assert!(s.allows("DEPLOY", "file:///srv/x"));
        assert!(!s.allows("DEPLOY", "https://gitea.local/evil/web.git"));
        assert!(!s.allows("DEPLOY", "file:///srv/xy"));
        assert!(s.allows("OTHER", "https://h/o/tools.git"));
        assert!(!s.allows("UNSCOPED", "https://gitea.local/acme/web.git"));
        assert!(SecretScopes::parse("NOEQUALS").is_err());
        assert!(SecretScopes::parse("BAD-NAME=*").is_err());
    }

    #[test]
    fn scopes_match_the_normalised_url_not_the_raw_text() {
        let s = SecretScopes::parse("DEPLOY=https://gitea.local/acme/*").unwrap();
        for evil in [
            "https://gitea.local/acme/../evil/x.git",
            "https://gitea.local/acme/%2e%2e/evil/x.git",
            "https://gitea.local/acme/%2E%2e/evil/x.git",
            "https://gitea.local/acme/./../evil/x.git",
            "https://gitea.local/acme/x/../../evil/x.git",
        ] {
            assert!(!s.allows("DEPLOY", evil), "{evil} got acme's secret");
        }
        for ok in [
            "https://gitea.local/acme/web.git",
            "HTTPS://Gitea.Local/acme/web.git",
            "https://gitea.local/acme/./web.git",
            "https://gitea.local/other/../acme/web.git",
        ] {
            assert!(s.allows("DEPLOY", ok), "{ok}");
        }
        // scp-like.
        let s = SecretScopes::parse("K=git@gitea.local:acme/*").unwrap();
        assert!(s.allows("K", "git@GITEA.local:acme/web.git"));
        assert!(!s.allows("K", "git@gitea.local:acme/../evil/web.git"));
        assert_eq!(
            normalise_url("https://u@H/a/./b/../c?x=..#y"),
            "https://u@h/a/c?x=..#y"
        );
    }
}
