//! ADR 0016 on the sources: following a job from the lifecycle's entry never returns to a file it left.
//! The same measurement as `scripts/agent-callgraph.py`: every reference from one source file of
//! `src/` to an item of another (`crate::`/`super::`/`self::` paths, `use` trees, names a `use` or `mod`
//! brought in; tests, comments and strings left out; a `pub use` of a child module followed to the file
//! that defines the item) is an edge. The test fails when any file reached from `lifecycle/mod.rs` can
//! reach a file that leads back to it (a cycle), naming the cycle and its edges.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

type Module = Vec<String>;

fn module_of(rel: &str) -> Module {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The code without tests, comments, strings and character literals.
fn strip(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let b: Vec<char> = text.chars().collect();
    let (mut out, mut i, n) = (String::new(), 0, b.len());
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| b.get(i + k) == Some(&c));
    while i < n {
        let c = b[i];
        if at(i, "//") {
            while i < n && b[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            i += 2;
            while i < n && !at(i, "*/") {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (i == 0 || !is_ident(b[i - 1])) && {
            let mut j = i + 1;
            while j < n && b[j] == '#' {
                j += 1;
            }
            j < n && b[j] == '"'
        } {
            let mut j = i + 1;
            while b[j] == '#' {
                j += 1;
            }
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', j - i - 1))
                .collect();
            i = j + 1;
            while i < n && !at(i, &close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < n && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && i + 2 < n && (b[i + 2] == '\'' || b[i + 1] == '\\') {
            // a character literal ('x', '\n', '\'', '\u{..}'), not a lifetime
            let mut j = i + 1;
            if b[j] == '\\' {
                j += 2;
                while j < n && b[j] != '\'' {
                    j += 1;
                }
            } else {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `a::{b, c::{d, e as f}, self}` -> [a b], [a c d], [a c e], [a].
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn rec(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, ch) in s.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&s[start..]);
        for it in items.into_iter().filter(|i| !i.is_empty()) {
            if let Some((head, rest)) = it.split_once('{') {
                let mut p = prefix.to_vec();
                p.extend(head.split("::").filter(|x| !x.is_empty()).map(String::from));
                rec(&p, &rest[..rest.rfind('}').unwrap_or(rest.len())], out);
            } else {
                let it = it.split(" as ").next().unwrap_or(it).trim();
                let segs: Vec<String> = it
                    .split("::")
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect();
                let mut p = prefix.to_vec();
                if segs != ["self"] {
                    p.extend(segs);
                }
                out.push(p);
            }
        }
    }
    let norm: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let norm = norm
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" ::", "::");
    let norm = norm
        .replace(", ", ",")
        .replace("{ ", "{")
        .replace(" }", "}");
    let mut out = Vec::new();
    rec(&[], &norm, &mut out);
    out
}

/// `use ...;` statements (with whether they are `pub`).
fn uses(code: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = &rest[..i];
        let word_start = i == 0 || !rest[..i].ends_with(is_ident);
        let after = &rest[i + 4..];
        if word_start {
            if let Some(end) = after.find(';') {
                let line_start = before.rfind(['\n', ';', '{', '}']).map_or(0, |p| p + 1);
                let public = before[line_start..].trim_start().starts_with("pub");
                out.push((public, after[..end].to_string()));
                rest = &after[end..];
                continue;
            }
        }
        rest = after;
    }
    out
}

/// Every `name::ident::...` path in `code` starting with one of `heads` (not preceded by `::` or an
/// identifier character).
fn paths(code: &str, heads: &BTreeSet<String>) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            let mut segs = Vec::new();
            let mut j = i;
            loop {
                let s = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                segs.push(chars[s..j].iter().collect::<String>());
                if j + 2 < chars.len()
                    && chars[j] == ':'
                    && chars[j + 1] == ':'
                    && is_ident(chars[j + 2])
                {
                    j += 2;
                } else {
                    break;
                }
            }
            if segs.len() > 1 && heads.contains(&segs[0]) {
                out.push(segs);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn following_a_job_from_the_lifecycle_never_returns_to_a_file_it_left() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("main.rs") {
                let rel = p
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                files.insert(rel, strip(&std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mods: HashMap<Module, String> = files.keys().map(|r| (module_of(r), r.clone())).collect();
    let mut reexports: HashMap<(Module, String), Module> = HashMap::new();
    for (rel, code) in &files {
        let m = module_of(rel);
        for (public, tree) in uses(code) {
            for segs in expand_use(&tree) {
                let child = [m.clone(), vec![segs[0].clone()]].concat();
                if public
                    && !["crate", "super", "self"].contains(&segs[0].as_str())
                    && mods.contains_key(&child)
                {
                    let mut target = m.clone();
                    target.extend(segs[..segs.len() - 1].iter().cloned());
                    reexports.insert((m.clone(), segs[segs.len() - 1].clone()), target);
                }
            }
        }
    }
    let resolve = |m: &Module, segs: &[String]| -> Option<Module> {
        let (base, path): (Module, Vec<String>) = match segs.first()?.as_str() {
            "crate" => (Vec::new(), segs[1..].to_vec()),
            "super" | "self" => {
                let mut base = m.clone();
                let mut i = 0;
                while i < segs.len() && (segs[i] == "super" || segs[i] == "self") {
                    if segs[i] == "super" {
                        base.pop();
                    }
                    i += 1;
                }
                (base, segs[i..].to_vec())
            }
            first => {
                let child = [m.clone(), vec![first.to_string()]].concat();
                if !mods.contains_key(&child) {
                    return None;
                }
                (m.clone(), segs.to_vec())
            }
        };
        let full: Module = [base, path].concat();
        for k in (0..=full.len()).rev() {
            let target = full[..k].to_vec();
            if mods.contains_key(&target) {
                if let Some(next) = full.get(k) {
                    if let Some(t) = reexports.get(&(target.clone(), next.clone())) {
                        return Some(t.clone());
                    }
                }
                return Some(target);
            }
        }
        None
    };
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (rel, code) in &files {
        let m = module_of(rel);
        let mut local: BTreeMap<String, Module> = BTreeMap::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("mod ") {
            let after = &rest[i + 4..];
            let name: String = after.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() && after[name.len()..].trim_start().starts_with(';') {
                local.insert(name.clone(), [m.clone(), vec![name]].concat());
            }
            rest = after;
        }
        let mut body = code.clone();
        for (_, tree) in uses(code) {
            body = body.replacen(&tree, "", 1);
            for segs in expand_use(&tree) {
                if let Some(t) = resolve(&m, &segs) {
                    if t != m {
                        *edges.entry((rel.clone(), mods[&t].clone())).or_default() += 1;
                        if segs.last().is_some_and(|l| l != "*") {
                            local.entry(segs[segs.len() - 1].clone()).or_insert(t);
                        }
                    }
                }
            }
        }
        let heads: BTreeSet<String> = ["crate", "super", "self"]
            .map(String::from)
            .into_iter()
            .collect();
        for p in paths(&body, &heads) {
            if let Some(t) = resolve(&m, &p) {
                if t != m {
                    *edges.entry((rel.clone(), mods[&t].clone())).or_default() += 1;
                }
            }
        }
        let names: BTreeSet<String> = local.keys().cloned().collect();
        for p in paths(&body, &names) {
            let full: Vec<String> = std::iter::once("crate".to_string())
                .chain(local[&p[0]].iter().cloned())
                .chain(p[1..].iter().cloned())
                .collect();
            if let Some(t) = resolve(&Vec::new(), &full) {
                if t != m {
                    *edges.entry((rel.clone(), mods[&t].clone())).or_default() += 1;
                }
            }
        }
    }
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        graph.entry(a).or_default().insert(b);
    }
    // Reached from the lifecycle's entry.
    let entry = "lifecycle/mod.rs";
    let mut seen: BTreeSet<&str> = BTreeSet::from([entry]);
    let mut stack = vec![entry];
    while let Some(f) = stack.pop() {
        for g in graph.get(f).into_iter().flatten() {
            if seen.insert(g) {
                stack.push(g);
            }
        }
    }
    for must in [
        "lifecycle/execute.rs",
        "kinds/rust.rs",
        "kinds/gpu.rs",
        "kinds/image/mod.rs",
        "process.rs",
        "cache/slots.rs",
    ] {
        assert!(
            seen.contains(must),
            "{must} is not reached from {entry}: the measurement is broken"
        );
    }
    // A file that reaches one of its own predecessors: returns to a file already left.
    let reach = |from: &str| -> BTreeSet<&str> {
        let mut s = BTreeSet::new();
        let mut st = vec![from];
        while let Some(f) = st.pop() {
            for g in graph.get(f).into_iter().flatten() {
                if s.insert(*g) {
                    st.push(g);
                }
            }
        }
        s
    };
    let mut back = Vec::new();
    for ((a, b), n) in &edges {
        if seen.contains(a.as_str()) && reach(b).contains(a.as_str()) {
            back.push(format!("{a} -> {b} ({n} references)"));
        }
    }
    assert!(
        back.is_empty(),
        "returns to a file already left (ADR 0016):\n{}",
        back.join("\n")
    );
    // The measurement sees the edges it must: the lifecycle calls each kind, each kind its utilities.
    for (a, b) in [
        ("lifecycle/execute.rs", "kinds/rust.rs"),
        ("lifecycle/execute.rs", "kinds/image/mod.rs"),
        ("lifecycle/execute.rs", "kinds/gpu.rs"),
        ("kinds/rust.rs", "process.rs"),
        ("kinds/gpu.rs", "kinds/rust.rs"),
        ("lifecycle/source.rs", "patch.rs"),
    ] {
        assert!(
            edges.contains_key(&(a.to_string(), b.to_string())),
            "no edge {a} -> {b}"
        );
    }
}
