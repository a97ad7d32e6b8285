"""MCP benchmarks (docs/benchmarks.md): tool-call overhead on loopback, get_logs search over a 10 MiB log,
get_diagnostics on a job with 1,000 compiler messages, answer sizes. Real stack (conftest.Stack: redis-server,
the dispatcher and agent binaries, real cargo builds), the official Python SDK as the client.

    (cd rust && cargo build --release --locked -p raibid-dispatcher -p raibid-agent --bins)
    RAIBID_BIN_DIR=rust/target/release .tools/mcp-venv/bin/python tests/mcp/bench_mcp.py [--examples]

Each row: n calls after the jobs finished, p50/p99 of the client-side call time, the answer's size. The
search rows also give the Redis round trips (`XRANGE` calls, counted by the server's INFO commandstats)
of one call.
"""

from __future__ import annotations

import json
import socket
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Stack, make_crate  # noqa: E402
import test_mcp as t  # noqa: E402


def size(r) -> tuple[int, int]:
    """Bytes of the whole tool result as the client receives it (structured + text content), ≈ tokens."""
    n = len(json.dumps(r.structured_content or {})) + sum(len(getattr(c, "text", "") or "") for c in r.content)
    return n, n // 4


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def redis_calls(port: int, cmd: str) -> int:
    """calls= of cmdstat_<cmd> in the server's INFO commandstats (raw RESP over a socket)."""
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        head = b""
        while b"\r\n" not in head:
            head += c.recv(65536)
        n = int(head[1:head.index(b"\r\n")])
        body = head[head.index(b"\r\n") + 2:]
        while len(body) < n:
            body += c.recv(65536)
    for line in body.decode().splitlines():
        if line.startswith(f"cmdstat_{cmd}:calls="):
            return int(line.split("=")[1].split(",")[0])
    return 0


def row(name, n, ms, sz) -> None:
    b, tok = sz
    print(f"| {name} | {n} | {statistics.median(ms):.1f} | {pct(ms, 99):.1f} | {b:,} | {tok:,} |", flush=True)


async def timed(s, name, args, n):
    out = []
    r = None
    for _ in range(n):
        t0 = time.perf_counter()
        r = await s.call_tool(name, args)
        out.append((time.perf_counter() - t0) * 1000)
        assert not r.is_error, r.content
    return out, r


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the stack on timeout
    examples = "--examples" in sys.argv
    tmp = Path(tempfile.mkdtemp(prefix="raibid-mcp-bench-"))
    stack = Stack(tmp)
    rows = []
    try:
        warn = "pub fn many() {\n" + "".join(f"    let v{i} = {i};\n" for i in range(1000)) + "}\n"
        url_w, _ = make_crate(tmp, "warnings", warn)
        flood = ("steps:\n  - name: flood\n    run: \"seq 1 70000 | sed 's/$/ the quick brown fox jumps over the lazy dog, padding to seventy b/'\"\n"
                 "  - name: fail\n    run: \"echo needle-in-the-log; exit 3\"\n")
        url_f, _ = make_crate(tmp, "flood", "pub fn x() {}\n", {".raibid.yaml": flood})

        async def go():
            async with t.session(stack) as s:
                print(f"negotiated protocol: {s.negotiated}")
                print("| call | n | p50 ms | p99 ms | answer bytes | ≈ tokens |\n|---|---|---|---|---|---|", flush=True)
                jw = (await t.call(s, "submit_job", {"repo_url": url_w, "ref": "main"}))["job_id"]
                jf = (await t.call(s, "submit_job", {"repo_url": url_f, "ref": "main"}))["job_id"]
                await t.wait_final(s, jw)
                await t.wait_final(s, jf)
                await timed(s, "get_job", {"job_id": jw}, 20)  # warm-up
                ms, r = await timed(s, "get_job", {"job_id": jw}, 500)
                row(*("get_job", 500, ms, size(r)))
                ms, r = await timed(s, "queue_status", {}, 200)
                row(*("queue_status", 200, ms, size(r)))
                total = (await t.call(s, "get_logs", {"job_id": jf, "max_lines": 1}))["total_lines"]
                x0 = redis_calls(stack.redis_port, "xrange")
                ms, r = await timed(s, "get_logs", {"job_id": jf, "search": "^needle-in-the-log$", "context": 2}, 10)
                trips = (redis_calls(stack.redis_port, "xrange") - x0) // 10
                assert r.structured_content["matches"] == 1, r.structured_content
                row(*(f"get_logs search, ≈ 10 MiB log ({total:,} lines, 1 match; {trips} XRANGE per call)", 10, ms, size(r)))
                x0 = redis_calls(stack.redis_port, "xrange")
                ms, r = await timed(s, "get_logs", {"job_id": jf, "search": "fox", "max_matches": 500}, 10)
                trips = (redis_calls(stack.redis_port, "xrange") - x0) // 10
                row(*(f"get_logs search, every line matches (budget stop; {trips} XRANGE per call)", 10, ms, size(r)))
                ms, r = await timed(s, "get_logs", {"job_id": jf, "step": "flood"}, 20)
                row(*("get_logs tail 200 of a step, ≈ 10 MiB log", 20, ms, size(r)))
                a = await t.call(s, "get_logs", {"job_id": jf, "from_line": 60000, "max_lines": 2000})
                ms, r = await timed(s, "get_logs", {"job_id": jf, "cursor": a["next"]["cursor"], "max_lines": 2000}, 20)
                row(*("get_logs next range by cursor (2,000 lines at line 60,000+)", 20, ms, size(r)))
                ms, r = await timed(s, "get_logs", {"job_id": jf, "from_line": 60000, "max_lines": 2000}, 10)
                row(*("get_logs range by from_line=60000 (scan from the start)", 10, ms, size(r)))
                ms, r = await timed(s, "get_diagnostics", {"job_id": jw}, 50)
                d = r.structured_content
                row(*(f"get_diagnostics, {d['total_compiler']} compiler messages (returns {len(d['compiler'])})", 50, ms, size(r)))
                ms, r = await timed(s, "get_diagnostics", {"job_id": jw, "rendered": False, "limit": 500}, 50)
                d = r.structured_content
                row(*(f"get_diagnostics rendered=false limit=500 (returns {len(d['compiler'])})", 50, ms, size(r)))
                if examples:
                    for name, args in [("get_job", {"job_id": jw}), ("get_diagnostics", {"job_id": jw, "limit": 2}),
                                       ("get_logs", {"job_id": jf, "search": "^needle", "context": 1}),
                                       ("queue_status", {}), ("list_jobs", {"limit": 1})]:
                        r = await s.call_tool(name, args)
                        print(f"--- {name} {json.dumps(args)}\n{json.dumps(r.structured_content, indent=1)[:3000]}")

        anyio.run(go)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
