#!/usr/bin/env python3
"""The agent's file-level call graph, as ADR 0016 measures it (issue 20 §1).

Every reference from one source file of `rust/raibid-agent/src` to an item of another (a call, a type, a
constant: `crate::…`, `super::…`, `self::…` paths, `use` trees, and names a `use` or `mod` brought in) is
an edge between the two files; code after `#[cfg(test)]` and comments are left out, re-exports are
followed to the file that defines the item when the re-export is a `pub use` of a child module.
From the entry file (the lifecycle's entry: `lifecycle/mod.rs`, before the refactor `runner.rs`) it
reports:

- the files a job's context reaches (transitively),
- the references that return to a file already left: edges whose target can reach their source again
  (both in one strongly connected component: following them, a job comes back to where it was),
  counted per occurrence and per pair of files, with the components listed.

Usage: scripts/agent-callgraph.py [-v] [SRC_DIR] [ENTRY]    (defaults: rust/raibid-agent/src, lifecycle/mod.rs
or runner.rs, whichever exists; -v lists every edge). To measure another commit: `git worktree add /tmp/x <commit>` and point
SRC_DIR at /tmp/x/rust/raibid-agent/src.
"""

import os
import re
import signal
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(rel):
    """`lifecycle/mod.rs` -> ('lifecycle',), `lib.rs` -> (), `kinds/image/buildah.rs` -> (...)."""
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text):
    """The code without tests, comments, strings and character literals."""
    text = text.split("#[cfg(test)]")[0]
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            j = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if j < 0 else j + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\.|\\u\{[0-9a-fA-F]+\}|[^'\\])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e as f}, self}` -> [['a','b'], ['a','c','d'], ['a','c','e'], ['a']]."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def rec(prefix, s):
        # split s at top-level commas
        depth, start, items = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:i])
                start = i + 1
        items.append(s[start:])
        for it in items:
            if not it:
                continue
            if "{" in it:
                head, rest = it.split("{", 1)
                head = [p for p in head.split("::") if p]
                rec(prefix + head, rest[: rest.rfind("}")])
            else:
                it = it.split("as")[0] if re.search(r"[A-Za-z0-9_]as[A-Za-z_]", it) is None and "as" in it else it
                it = re.sub(r"\bas\b.*", "", it)
                segs = [p for p in it.split("::") if p]
                if segs == ["self"]:
                    out.append(prefix)
                else:
                    out.append(prefix + segs)

    rec([], tree)
    return out


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    verbose = "-v" in sys.argv
    sys.argv = [a for a in sys.argv if a != "-v"]
    src = sys.argv[1] if len(sys.argv) > 1 else "rust/raibid-agent/src"
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs") and n != "main.rs":
                rel = os.path.relpath(os.path.join(root, n), src)
                files[rel] = strip(open(os.path.join(root, n), encoding="utf-8").read())
    mods = {module_of(rel): rel for rel in files}
    if len(sys.argv) > 2:
        entry = sys.argv[2]
    else:
        entry = "lifecycle/mod.rs" if "lifecycle/mod.rs" in files else "runner.rs"

    # `pub use child::Item` re-exports: (module, Item) -> defining module.
    reexports = {}
    for rel, text in files.items():
        m = module_of(rel)
        for tree in re.findall(r"pub(?:\([a-z]+\))?\s+use\s+([^;]+);", text):
            for segs in expand_use(tree):
                if segs and segs[0] not in ("crate", "super", "self") and m + (segs[0],) in mods:
                    reexports[(m, segs[-1])] = m + tuple(segs[:-1])

    def resolve(m, segs):
        """Absolute path of `segs` written in module m, as a module tuple plus the rest."""
        if not segs:
            return None
        if segs[0] == "crate":
            path = list(segs[1:])
            base = ()
        elif segs[0] in ("super", "self"):
            base = m
            i = 0
            while i < len(segs) and segs[i] in ("super", "self"):
                if segs[i] == "super":
                    base = base[:-1]
                i += 1
            path = list(segs[i:])
        elif m + (segs[0],) in mods:
            base, path = m, list(segs)
        else:
            return None
        full = tuple(base) + tuple(path)
        # longest module prefix with a file
        for k in range(len(full), -1, -1):
            if full[:k] in mods:
                target = full[:k]
                rest = full[k:]
                if rest and (target, rest[0]) in reexports:
                    target = reexports[(target, rest[0])]
                return target
        return None

    edges = defaultdict(int)
    for rel, text in files.items():
        m = module_of(rel)
        local = {}
        for name in re.findall(r"\bmod\s+(" + IDENT + r")\s*;", text):
            local[name] = m + (name,)
        for tree in re.findall(r"\buse\s+([^;]+);", text):
            for segs in expand_use(tree):
                t = resolve(m, segs)
                if t is not None and t != m:
                    edges[(rel, mods[t])] += 1
                    full = resolve(m, segs)
                    if full is not None and segs and mods.get(full) and segs[-1] != "*":
                        local.setdefault(segs[-1], full)
        body = re.sub(r"\buse\s+[^;]+;", "", text)
        for path in re.findall(r"\b(?:crate|super|self)(?:::" + IDENT + r")+", body):
            t = resolve(m, path.split("::"))
            if t is not None and t != m:
                edges[(rel, mods[t])] += 1
        for name, target in local.items():
            for rest in re.findall(r"(?<![:\w])" + re.escape(name) + r"((?:::" + IDENT + r")+)", body):
                t = resolve((), ["crate", *target, *rest.split("::")[1:]])
                if t is not None and t != m:
                    edges[(rel, mods[t])] += 1

    graph = defaultdict(set)
    for (a, b) in edges:
        graph[a].add(b)
    # reachable from the entry
    seen, stack = {entry}, [entry]
    while stack:
        f = stack.pop()
        for g in graph[f]:
            if g not in seen:
                seen.add(g)
                stack.append(g)
    # strongly connected components (Tarjan) of the reachable subgraph
    index, low, on, st, comps, counter = {}, {}, set(), [], [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        st.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in seen:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(seen):
        if v not in index:
            strong(v)
    comp_of = {f: i for i, c in enumerate(comps) for f in c}
    back = {(a, b): n for (a, b), n in edges.items() if a in seen and b in seen and comp_of[a] == comp_of[b]}
    print(f"entry: {entry}")
    print(f"files reached: {len(seen)}")
    print(f"references between them: {sum(n for (a, b), n in edges.items() if a in seen)}")
    print(f"returns to a file already left: {sum(back.values())} references, {len(back)} file pairs")
    for c in comps:
        if len(c) > 1:
            print("  cycle: " + " <-> ".join(c))
    for (a, b), n in sorted(back.items()):
        print(f"    {a} -> {b}: {n}")
    if verbose:
        print("edges (file -> file: references):")
        for (a, b), n in sorted(edges.items()):
            if a in seen:
                print(f"    {a} -> {b}: {n}")
    kinds = sorted(f for f in seen if f.startswith("kinds/") or f.startswith("image/") or f in ("executor.rs", "gpu.rs", "handover.rs"))
    print("kind files reached: " + ", ".join(kinds))


if __name__ == "__main__":
    main()
