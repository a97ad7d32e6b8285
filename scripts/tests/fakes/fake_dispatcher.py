"""A fake raibid dispatcher API (/api/v1) for testing scripts/raibid.nu before and besides the real one.

It follows the API the dispatcher serves (rust/raibid-dispatcher/src/api.rs): bearer authentication on
every route, JSON errors {"error": {"code", "message"}}, the documented query parameters and body fields
(unknown ones are violations, as serde's deny_unknown_fields rejects them), cursor pagination of
GET /jobs, and Server-Sent Events for GET /jobs/{id}/logs?follow=true (`log` events, then `end`).

State (JSON): {"token": str, "jobs": [Job], "logs": {id: [line]}, "live": {id: [line]},
"queue": {...}, "agents": [...]}. `live` lines are streamed after the stored ones when following.
"""
from __future__ import annotations

import json
import random
import re
import string
import time
import datetime as dt
import pathlib

from fakebase import FakeServer, Reply, serve


def contract_statuses() -> set[str]:
    """The job statuses as the dispatcher knows them: the `Status` enum of raibid-core's job.rs."""
    src = (pathlib.Path(__file__).resolve().parents[3] / "rust/raibid-core/src/job.rs").read_text()
    body = re.search(r"pub enum Status \{(.*?)\n\}", src, re.S).group(1)
    names = re.findall(r"^\s*([A-Z][A-Za-z]*),$", body, re.M)
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", n).lower() for n in names}


STATUSES = contract_statuses()
FINAL = {"succeeded", "failed", "cancelled", "timed_out"}
ROUTES = [
    ("POST", r"/api/v1/jobs", "submit", set()),
    ("GET", r"/api/v1/jobs", "list", {"status", "repo", "limit", "cursor"}),
    ("GET", r"/api/v1/jobs/(?P<id>[^/]+)", "show", set()),
    ("GET", r"/api/v1/jobs/(?P<id>[^/]+)/logs", "logs", {"follow", "after", "limit"}),
    ("POST", r"/api/v1/jobs/(?P<id>[^/]+)/cancel", "cancel", set()),
    ("POST", r"/api/v1/jobs/(?P<id>[^/]+)/retry", "retry", set()),
    ("GET", r"/api/v1/queue", "queue", set()),
    ("GET", r"/api/v1/agents", "agents", set()),
    ("GET", r"/api/v1/mirrors", "mirrors", {"refresh"}),
]


def err(status, code, message):
    return Reply(status, {"error": {"code": code, "message": message}})


def now():
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id():
    return "".join(random.choice(string.ascii_uppercase + string.digits) for _ in range(26))


class FakeDispatcher(FakeServer):
    def __init__(self, state, args):
        super().__init__(state)
        for k, v in (("jobs", []), ("logs", {}), ("live", {}), ("queue", {}), ("agents", []), ("mirrors", {})):
            state.setdefault(k, v)

    def job(self, id):
        if not re.fullmatch(r"[A-Za-z0-9]{26}", id):
            raise err(404, "not_found", f"job {id} not found")
        for j in self.state["jobs"]:
            if j["id"] == id:
                return j
        raise err(404, "not_found", f"job {id} not found")

    def handle(self, req):
        if req["headers"].get("authorization") != f"Bearer {self.state['token']}":
            raise err(401, "unauthorized", "missing or wrong bearer token")
        for method, rx, name, allowed_q in ROUTES:
            m = re.fullmatch(rx, req["path"])
            if m and method == req["method"]:
                for q in req["query"]:
                    if q not in allowed_q:
                        self.violation(req, f"query parameter {q} is not part of the API")
                if method == "POST" and name != "submit" and req["raw"]:
                    self.violation(req, f"{name} takes no body")
                return getattr(self, "h_" + name)(req, **m.groupdict())
        self.violation(req, "no such API route")
        raise err(404, "not_found", "no such API route")

    def new_job(self, repo_url, ref, sha, kind, retry_of=None, image=None):
        t = now()
        job = {"id": new_id(), "kind": "image" if image else "rust", "status": "queued", "step": None, "attempt": 0, "agent": None,
               "source": {"repo_url": repo_url, "ref": ref, "sha": sha, "trigger": {"kind": kind, "actor": None},
                          "delivery_id": None, "forge_repo": None},
               "pipeline": None,
               "timestamps": {"received": t, "queued": t, "claimed": None, "started": None, "finished": None},
               "steps": [], "failure_reason": None, "retry_of": retry_of, "cancel_requested": False}
        if image:
            job["image"] = {"request": image, "phases": {}, "failed_phase": None, "image_id": None, "pushed": []}
        self.state["jobs"].insert(0, job)
        return job

    def h_submit(self, req):
        b = req["body"]
        if not isinstance(b, dict):
            raise err(400, "bad_request", "invalid JSON body")
        extra = set(b) - {"repo_url", "ref", "sha", "image"}
        if extra:
            self.violation(req, f"unknown body fields {sorted(extra)}")
            raise err(400, "bad_request", f"unknown field {sorted(extra)[0]}")
        if not isinstance(b.get("repo_url"), str) or not b["repo_url"]:
            self.violation(req, "repo_url missing")
            raise err(422, "unprocessable", "repo_url: must be a clone URL")
        if not isinstance(b.get("ref"), str) or not b["ref"]:
            self.violation(req, "ref missing")
            raise err(422, "unprocessable", "ref: not a valid git ref")
        sha = b.get("sha")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
            raise err(422, "unprocessable", "sha: must be a full 40- or 64-character hex commit id")
        image = b.get("image")
        if image is not None:
            known = {"name", "containerfile", "context", "tags", "build_args", "target", "test", "publish", "registry", "secrets"}
            if not isinstance(image, dict) or set(image) - known:
                self.violation(req, f"image: unknown fields {sorted(set(image) - known) if isinstance(image, dict) else image}")
                raise err(400, "bad_request", "image: unknown field")
            if not isinstance(image.get("name"), str) or not re.fullmatch(r"[a-z0-9]+([._/-][a-z0-9]+)*", image["name"]):
                raise err(422, "unprocessable", "image.name: not an OCI repository name")
            for i, tag in enumerate(image.get("tags", [])):
                if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
                    raise err(422, "unprocessable", f"image.tags[{i}]: not a valid tag")
            if "publish" in image and not isinstance(image["publish"], bool):
                raise err(422, "unprocessable", "image.publish: must be a boolean")
        ref = b["ref"] if b["ref"].startswith("refs/") else "refs/heads/" + b["ref"]
        return 201, self.new_job(b["repo_url"], ref, sha, "api", image=image), {}

    def h_list(self, req):
        q = req["query"]
        status = q.get("status")
        if status and status not in STATUSES:
            raise err(422, "unprocessable", f"status: `{status}` is not one of {', '.join(sorted(STATUSES))}")
        limit = q.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise err(422, "unprocessable", "limit: must be between 1 and 500")
        jobs = [j for j in self.state["jobs"] if (not status or j["status"] == status)
                and (not q.get("repo") or q["repo"] in j["source"]["repo_url"])]
        start = 0
        if q.get("cursor"):
            ids = [j["id"] for j in jobs]
            if q["cursor"] not in ids:
                raise err(422, "unprocessable", "cursor: not a cursor returned by this API")
            start = ids.index(q["cursor"])
        page = jobs[start:start + int(limit)]
        nxt = jobs[start + int(limit)]["id"] if len(jobs) > start + int(limit) else None
        return 200, {"jobs": page, "next_cursor": nxt}, {}

    def h_show(self, req, id):
        return 200, self.job(id), {}

    def h_logs(self, req, id):
        job = self.job(id)
        lines = self.state["logs"].get(id, [])
        if req["query"].get("follow") not in (None, "true", "false"):
            self.violation(req, "follow must be true or false")
        if req["query"].get("follow") == "true":
            self.stream(req["handler"], job, lines + self.state["live"].get(id, []))
            return None, None, None
        return 200, {"job": id, "status": job["status"], "lines": lines, "truncated": bool(job.get("log_truncated"))}, {}

    def stream(self, h, job, lines):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(text):
            data = text.encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()
        chunk(": keep-alive\n\n")
        for line in lines:
            chunk(f"event: log\nid: {line['seq']}\ndata: {json.dumps(line)}\n\n")
            time.sleep(0.05)  # arrive over time, like a running job
        while job["id"] in self.state.get("hold", []):
            chunk(": keep-alive\n\n")  # a job that runs on (state "hold": [ids])
            time.sleep(0.2)
        final = job["status"] if job["status"] in FINAL else "succeeded"
        chunk(f"event: end\ndata: {json.dumps({'status': final})}\n\n")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def h_cancel(self, req, id):
        job = self.job(id)
        if job["status"] in FINAL:
            raise err(409, "conflict", f"job {id} is {job['status']}")
        job["cancel_requested"] = True
        if job["status"] == "queued":
            job["status"] = "cancelled"
            job["failure_reason"] = "cancelled by a user"
            job["timestamps"]["finished"] = now()
        return 202, job, {}

    def h_retry(self, req, id):
        old = self.job(id)
        if old["status"] not in FINAL:
            raise err(409, "conflict", f"job {id} is {old['status']}; only a finished job can be retried")
        s = old["source"]
        return 201, self.new_job(s["repo_url"], s["ref"], s["sha"], "retry", retry_of=id), {}

    def h_queue(self, req):
        q = {"stream": "raibid:jobs", "group": "raibid-agents", "length": 0, "lag": 0, "pending": 0,
             "oldest_waiting_age_secs": None, "consumers": 0}
        q.update(self.state["queue"])
        return 200, q, {}

    def h_agents(self, req):
        return 200, {"agents": self.state["agents"]}, {}

    def h_mirrors(self, req):
        # The dispatcher's `mirrors::Snapshot` (GET /api/v1/mirrors, docs/api.md).
        q = req["query"].get("refresh")
        if q is not None and q not in ("true", "false"):
            raise err(400, "malformed_request", f"refresh={q} is not a boolean")
        m = {"mirrors": [], "read_at": None, "ttl_secs": 60, "error": None, "github_hosts": ["github.com"],
             "github_statuses": False}
        m.update(self.state["mirrors"])
        if q == "true":
            m["read_at"] = now()
        return 200, m, {}


if __name__ == "__main__":
    serve(FakeDispatcher)
