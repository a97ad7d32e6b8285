"""The MCP endpoint through the official Python SDK (`mcp`), against a real stack: the coding-agent loop
submit → wait → diagnostics on real cargo builds, patches, bounded logs, and the HTTP guards."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import TOKEN, git, make_crate

TOOLS = {"submit_job", "wait_for_job", "get_job", "get_failure_summary", "get_diagnostics", "get_logs", "list_jobs",
         "cancel_job", "retry_job", "queue_status", "cleanup", "validate_config",
         "find_flaky_tests", "get_test_history", "list_schedules"}


@asynccontextmanager
async def session(stack):
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with streamable_http_client(f"{stack.url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                init = await s.initialize()
                s.negotiated = init.protocol_version  # type: ignore[attr-defined]
                yield s


async def call(s, name: str, args: dict, progress=None) -> dict:
    r = await s.call_tool(name, args, progress_callback=progress)
    assert not r.is_error, f"{name} failed: {r.content}"
    assert r.structured_content is not None, r
    return r.structured_content


async def tool_error(s, name: str, args: dict) -> str:
    r = await s.call_tool(name, args)
    assert r.is_error, f"{name} should have failed: {r.structured_content}"
    return " ".join(c.text for c in r.content if getattr(c, "text", None))


async def wait_final(s, job_id: str) -> dict:
    seen = []

    async def progress(p, total, message):
        seen.append(message)

    for _ in range(40):
        w = await call(s, "wait_for_job", {"job_id": job_id, "timeout_secs": 20}, progress)
        if w["finished"]:
            w["progress_messages"] = seen
            return w
        assert w["waited_secs"] <= 21
    pytest.fail(f"job {job_id} never finished")


def run(coro):
    return anyio.run(coro)


def test_initialize_and_list_tools(stack):
    async def go():
        async with session(stack) as s:
            assert s.negotiated >= "2025-11-25", s.negotiated
            tools = (await s.list_tools()).tools
            assert {t.name for t in tools} == TOOLS
            for t in tools:
                assert t.description and len(t.description) > 40, t.name
                assert t.input_schema["type"] == "object", t.name
                assert t.output_schema is not None and t.output_schema["type"] == "object", t.name
    run(go)


def test_type_error_names_file_line_and_code_then_a_patch_fixes_it(stack, tmp_path):
    broken = 'pub fn answer() -> u32 {\n    let x: u32 = "forty-two";\n    x\n}\n'
    url, sha = make_crate(tmp_path, "typo", broken)

    async def go():
        async with session(stack) as s:
            sub = await call(s, "submit_job", {"repo_url": url, "ref": "main"})
            assert sub["status"] == "queued" and len(sub["job_id"]) == 26
            w = await wait_final(s, sub["job_id"])
            assert w["status"] == "failed" and "job" not in w, w
            # One call says why: the failing step, the error with file:line and code.
            f = await call(s, "get_failure_summary", {"job_id": sub["job_id"]})
            assert f["failed_step"]["name"] == "build" and f["errors"][0]["code"] == "E0308", f
            d = await call(s, "get_diagnostics", {"job_id": sub["job_id"]})
            e = d["compiler"][0]
            assert (e["level"], e["code"], e["file"], e["line"]) == ("error", "E0308", "src/lib.rs", 2), e
            assert "mismatched types" in e["message"]
            assert "^" in e["rendered"]
            assert d["errors"] == 1
            # The log reads like a normal build: rendered text, no JSON.
            logs = await call(s, "get_logs", {"job_id": sub["job_id"]})
            assert logs["mode"] == "tail" and logs["step"] == "build"
            text = "\n".join(l["text"] for l in logs["lines"])
            assert "error[E0308]: mismatched types" in text and '{"reason"' not in text, text
            # The fix, as an uncommitted patch against the same commit.
            fixed = broken.replace('"forty-two"', "42")
            repo = Path(url.removeprefix("file://"))
            (repo / "src" / "lib.rs").write_text(fixed)
            patch = git(repo, "diff")
            git(repo, "checkout", "--", ".")
            sub2 = await call(s, "submit_job", {"repo_url": url, "ref": "main", "sha": sha, "patch": patch})
            w2 = await wait_final(s, sub2["job_id"])
            assert w2["status"] == "succeeded", w2
            # get_job shows what the caches did (issue 12 §3): the slot, its key, the units cargo reused.
            j = await call(s, "get_job", {"job_id": sub2["job_id"]})
            assert [st["name"] for st in j["steps"]][:3] == ["clone", "patch", "config"]
            assert j["cargo"]["total"] >= 1
            c = j["cache"]
            assert c["key"] and c["slot"] and (c["restore"] in ("warm", "cold") or c["restore"].startswith("seeded:")), c
            assert c["units_total"] >= 1 and 0 <= c["units_fresh"] <= c["units_total"], c
            assert c["slot_bytes"] > 0 and c["restore_ms"] >= 0, c
            assert "lease" not in j
    run(go)


def test_failing_test_reports_name_and_panic_message(stack, tmp_path):
    lib = ("pub fn add(a: i32, b: i32) -> i32 { a - b }\n\n#[cfg(test)]\nmod tests {\n    #[test]\n"
           "    fn adds() {\n        println!(\"checking add\");\n        assert_eq!(super::add(2, 2), 4, \"two and two\");\n    }\n}\n")
    url, _ = make_crate(tmp_path, "adder", lib)

    async def go():
        async with session(stack) as s:
            sub = await call(s, "submit_job", {"repo_url": url, "ref": "main"})
            w = await wait_final(s, sub["job_id"])
            assert w["status"] == "failed" and w["step"] == "test", w
            d = await call(s, "get_diagnostics", {"job_id": sub["job_id"]})
            t = d["tests"][0]
            assert t["name"] == "tests::adds", t
            assert "two and two" in t["panic_message"] and "left == right" in t["panic_message"], t
            assert (t["file"], t["line"]) == ("src/lib.rs", 8), t
            assert "checking add" in t["output"]
    run(go)


def test_bad_patch_fails_the_patch_step_naming_the_hunk(stack, tmp_path):
    url, sha = make_crate(tmp_path, "unpatched", "pub fn one() -> i32 {\n    1\n}\n")
    bad = ("diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n"
           "@@ -1,3 +1,3 @@\n pub fn one() -> i32 {\n-    7\n+    2\n }\n")

    async def go():
        async with session(stack) as s:
            sub = await call(s, "submit_job", {"repo_url": url, "ref": "main", "sha": sha, "patch": bad})
            await wait_final(s, sub["job_id"])
            job = await call(s, "get_job", {"job_id": sub["job_id"]})
            assert job["status"] == "failed" and job["step"] == "patch", job
            assert "src/lib.rs hunk #1 `@@ -1,3 +1,3 @@`" in job["failure_reason"], job["failure_reason"]
            # get_diagnostics falls back to the step's last lines, saying so.
            d = await call(s, "get_diagnostics", {"job_id": sub["job_id"]})
            assert d["step_tail"]["step"] == "patch" and "without compiler errors" in d["step_tail"]["note"]
            # An unknown ref names the branches there are.
            sub2 = await call(s, "submit_job", {"repo_url": url, "ref": "mian"})
            await wait_final(s, sub2["job_id"])
            j2 = await call(s, "get_job", {"job_id": sub2["job_id"]})
            assert "ref `refs/heads/mian` not found" in j2["failure_reason"], j2["failure_reason"]
            assert "branches: main" in j2["failure_reason"]
            # Bad input is a tool error naming the field, not a protocol error.
            msg = await tool_error(s, "submit_job", {"repo_url": url, "ref": "main", "patch": "hello"})
            assert msg.startswith("patch:"), msg
            msg = await tool_error(s, "get_job", {"job_id": "nope"})
            assert "job_id" in msg
    run(go)


def test_a_10_mib_log_is_answered_within_budget_and_ranges_continue(stack, tmp_path):
    # ≈ 10 MiB as the log cap counts it (payload + per-line overhead, cap 10 MiB): 70,000 lines of ~70 bytes.
    pipeline = ("steps:\n  - name: flood\n    run: \"seq 1 70000 | sed 's/$/ the quick brown fox jumps over the lazy dog, padding to seventy b/'\"\n"
                "  - name: fail\n    run: \"echo needle-in-the-log; exit 3\"\n")
    url, _ = make_crate(tmp_path, "flood", "pub fn x() {}\n", {".raibid.yaml": pipeline})

    async def go():
        async with session(stack) as s:
            sub = await call(s, "submit_job", {"repo_url": url, "ref": "main"})
            w = await wait_final(s, sub["job_id"])
            assert w["status"] == "failed", w
            # The flood step runs for seconds: the waits reported progress while it did.
            assert any("flood" in (m or "") for m in w["progress_messages"]), w["progress_messages"]
            budget = 75_000  # the server's answer budget: 25k tokens at 3 bytes per token (Claude Code's limit)
            r = await s.call_tool("get_logs", {"job_id": sub["job_id"], "step": "flood"})
            size = len(json.dumps(r.structured_content, separators=(",", ":"))) + sum(len(c.text) for c in r.content)
            assert size < budget, size
            tail = r.structured_content
            assert tail["total_lines"] > 70_000 and not tail["log_truncated"] 
            assert any(l["text"].startswith("70000 ") for l in tail["lines"][-3:]), tail["lines"][-3:]
            assert tail["next"] is not None and tail["cut"]
            # A range from the start, then the next range continues exactly where it stopped.
            a = await call(s, "get_logs", {"job_id": sub["job_id"], "from_line": 1, "max_lines": 2000})
            assert len(json.dumps(a)) < budget / 2
            last = a["lines"][-1]["n"]
            b = await call(s, "get_logs", {"job_id": sub["job_id"], "cursor": a["next"]["cursor"], "max_lines": 2000})
            assert b["lines"][0]["n"] == last + 1
            c = await call(s, "get_logs", {"job_id": sub["job_id"], "from_line": a["next"]["from_line"], "max_lines": 5})
            assert c["lines"][0]["n"] == last + 1 and c["lines"][0]["text"] == b["lines"][0]["text"]
            # A search over the whole log finds the needle with context.
            f = await call(s, "get_logs", {"job_id": sub["job_id"], "search": "^needle-in-the-log$", "context": 1})
            hits = [l for l in f["lines"] if l.get("hit")]
            assert f["matches"] == 1 and hits[0]["step"] == "fail", f
            # Default tail: the failed step.
            d = await call(s, "get_logs", {"job_id": sub["job_id"]})
            assert d["step"] == "fail"
    run(go)


def post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json", "accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_no_token_is_401_and_a_wrong_origin_is_403(stack):
    mcp = f"{stack.url}/mcp"
    assert post(mcp, {}) == 401
    assert post(mcp, {"authorization": "Bearer wrong"}) == 401
    assert post(mcp, {"authorization": f"Bearer {TOKEN}", "origin": "https://evil.example"}) == 403
    assert post(mcp, {"authorization": f"Bearer {TOKEN}"}) == 200
    # The SDK client refuses too.
    async def go():
        async with create_mcp_http_client() as http:
            with pytest.raises(BaseException):
                async with streamable_http_client(mcp, http_client=http) as (read, write):
                    async with ClientSession(read, write) as s:
                        with anyio.fail_after(10):
                            await s.initialize()
    run(go)


def test_list_schedules_shows_a_schedule_made_through_the_rest_api(stack):
    """Issue 22 §3: schedules are made with the REST API; MCP lists them (read-only)."""
    body = json.dumps({"repo_url": "file:///srv/hello", "ref": "main", "cron": "0 3 * * *",
                       "timezone": "Europe/Berlin", "env": {"CARGO_UPDATE": "1"}, "paused": True}).encode()
    req = urllib.request.Request(f"{stack.url}/api/v1/schedules", data=body, method="POST", headers={
        "content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201
        made = json.loads(r.read())

    async def go():
        async with session(stack) as s:
            got = await call(s, "list_schedules", {})
            mine = [x for x in got["schedules"] if x["id"] == made["id"]]
            assert len(mine) == 1, got
            m = mine[0]
            assert (m["ref"], m["cron"], m["timezone"], m["env"], m["paused"]) == (
                "refs/heads/main", "0 3 * * *", "Europe/Berlin", {"CARGO_UPDATE": "1"}, True)
            assert m["next_run"] is None and got["cut"] is None
    run(go)
