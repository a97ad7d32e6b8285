"""A fake GitHub REST API for the Nushell tests.

There is no machine-readable GitHub API document in this repository, so the documented shapes of the few
endpoints raibid-ci calls are written down below (from docs.github.com/en/rest, API version 2022-11-28):
paths, methods, query parameters, body fields (required and allowed), and the request headers GitHub
documents (User-Agent is mandatory; Accept: application/vnd.github+json and X-GitHub-Api-Version are
recommended and checked here). Answers follow GitHub: list endpoints paginate with `per_page` (default 30,
max 100) and a `Link` header (rel="next"/"last"/"first"/"prev"); every answer carries the x-ratelimit-*
headers; an exhausted primary limit answers 403 "API rate limit exceeded" until x-ratelimit-reset; a
secondary limit answers 403 with Retry-After. Violations of the documented shapes are recorded.

State (JSON): {"accounts": {login: {"type": "Organization"|"User"}}, "viewer": login|null,
"token": str|null, "repos": {full_name: {...}}, "hooks": {full_name: [hook]},
"rate": {"limit": 5000, "remaining": 5000, "reset_in": 3600}, "secondary_once": ["GET /path"]}
"""
from __future__ import annotations

import datetime as dt
import itertools
import re
import time
from urllib.parse import urlencode

from fakebase import FakeServer, Reply, serve

_ids = itertools.count(1000)
PAGE_Q = {"per_page", "page"}

# method, path template, allowed query parameters, required body fields, allowed body fields
DOCUMENTED = [
    ("GET", "/user", set(), None, None),
    ("GET", "/users/{username}", set(), None, None),
    ("GET", "/orgs/{org}/repos", {"type", "sort", "direction"} | PAGE_Q, None, None),
    ("GET", "/users/{username}/repos", {"type", "sort", "direction"} | PAGE_Q, None, None),
    ("GET", "/user/repos", {"visibility", "affiliation", "type", "sort", "direction", "since", "before"} | PAGE_Q, None, None),
    ("GET", "/repos/{owner}/{repo}", set(), None, None),
    ("GET", "/repos/{owner}/{repo}/hooks", PAGE_Q, None, None),
    ("POST", "/repos/{owner}/{repo}/hooks", set(), {"config"}, {"name", "config", "events", "active"}),
    ("PATCH", "/repos/{owner}/{repo}/hooks/{hook_id}", set(), set(), {"config", "events", "add_events", "remove_events", "active"}),
]
HOOK_CONFIG_REQUIRED = {"url"}
HOOK_CONFIG_ALLOWED = {"url", "content_type", "secret", "insecure_ssl"}
ENUMS = {"type": {"all", "public", "private", "forks", "sources", "member", "owner"},
         "affiliation": None, "content_type": {"json", "form"}, "insecure_ssl": {"0", "1"}}


def compile_routes():
    out = []
    for method, tpl, q, req_body, allowed in DOCUMENTED:
        names = re.findall(r"\{([^}]+)\}", tpl)
        rx = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(tpl)) + "$")
        out.append((method, tpl, rx, names, q, req_body, allowed))
    return out


class FakeGitHub(FakeServer):
    def __init__(self, state, args):
        super().__init__(state)
        for k, v in (("accounts", {}), ("repos", {}), ("hooks", {}), ("viewer", None), ("token", None),
                     ("secondary_once", []), ("rate_limited", 0)):
            state.setdefault(k, v)
        rate = state.setdefault("rate", {})
        rate.setdefault("limit", 5000)
        rate.setdefault("remaining", rate["limit"])
        rate["reset"] = int(time.time()) + int(rate.pop("reset_in", 3600))
        self.routes = compile_routes()

    def check_headers(self, req):
        h = req["headers"]
        if not h.get("user-agent"):
            self.violation(req, "no User-Agent header (GitHub rejects such requests)")
        if h.get("accept") != "application/vnd.github+json":
            self.violation(req, f"Accept should be application/vnd.github+json, got {h.get('accept')!r}")
        if h.get("x-github-api-version") != "2022-11-28":
            self.violation(req, f"X-GitHub-Api-Version should be 2022-11-28, got {h.get('x-github-api-version')!r}")
        auth = h.get("authorization")
        if auth is None:
            return None
        scheme, _, tok = auth.partition(" ")
        if scheme not in ("Bearer", "token"):
            self.violation(req, f"Authorization scheme {scheme!r} is not Bearer or token")
        if tok != self.state["token"]:
            raise Reply(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        return tok

    def rate_headers(self):
        r = self.state["rate"]
        return {"x-ratelimit-limit": r["limit"], "x-ratelimit-remaining": r["remaining"],
                "x-ratelimit-used": r["limit"] - r["remaining"], "x-ratelimit-reset": r["reset"],
                "x-ratelimit-resource": "core"}

    def handle(self, req):
        authed = self.check_headers(req)
        r = self.state["rate"]
        if time.time() >= r["reset"]:
            r["remaining"], r["reset"] = r["limit"], int(time.time()) + 3600
        key = f"{req['method']} {req['path']}"
        if key + ("?" + req["raw_query"] if req["raw_query"] else "") in self.state["secondary_once"] or key in self.state["secondary_once"]:
            self.state["secondary_once"] = [k for k in self.state["secondary_once"] if not k.startswith(key)]
            self.state["rate_limited"] += 1
            return 403, {"message": "You have exceeded a secondary rate limit.",
                         "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}, \
                {**self.rate_headers(), "retry-after": 1}
        if r["remaining"] <= 0:
            self.state["rate_limited"] += 1
            return 403, {"message": "API rate limit exceeded for 127.0.0.1.",
                         "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}, self.rate_headers()
        r["remaining"] -= 1
        for method, tpl, rx, names, allowed_q, req_body, allowed_body in self.routes:
            m = rx.match(req["path"])
            if not m or method != req["method"]:
                continue
            params = dict(zip(names, m.groups()))
            for q, v in req["query"].items():
                if q not in allowed_q:
                    self.violation(req, f"query parameter {q} is not documented for {method} {tpl}")
                if q == "per_page" and not (v.isdigit() and 1 <= int(v) <= 100):
                    self.violation(req, f"per_page={v} (1..100)")
                if q == "type" and v not in ENUMS["type"]:
                    self.violation(req, f"type={v} is not documented")
            if req_body is not None:
                self.check_body(req, req_body, allowed_body)
            elif req["raw"]:
                self.violation(req, f"{method} {tpl} takes no body")
            name = "h_" + method.lower() + re.sub(r"[^a-z]+", "_", tpl.lower()).rstrip("_")
            status, body, headers = getattr(self, name)(req, authed, **params)
            return status, body, {**self.rate_headers(), **headers}
        self.violation(req, "not a documented GitHub endpoint (for this fake)")
        return 404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}, self.rate_headers()

    def check_body(self, req, required, allowed):
        b = req["body"]
        if not isinstance(b, dict):
            self.violation(req, "body must be a JSON object")
            return
        for k in required - b.keys():
            self.violation(req, f"body.{k} is required")
        for k in b.keys() - allowed:
            self.violation(req, f"body.{k} is not a documented field")
        if "events" in b and not (isinstance(b["events"], list) and all(isinstance(e, str) for e in b["events"])):
            self.violation(req, "body.events must be an array of strings")
        if "active" in b and not isinstance(b["active"], bool):
            self.violation(req, "body.active must be a boolean")
        if "name" in b and b["name"] != "web":
            self.violation(req, "body.name must be 'web'")
        cfg = b.get("config")
        if cfg is not None:
            if req["method"] == "POST":
                for k in HOOK_CONFIG_REQUIRED - cfg.keys():
                    self.violation(req, f"body.config.{k} is required")
            for k, v in cfg.items():
                if k not in HOOK_CONFIG_ALLOWED:
                    self.violation(req, f"body.config.{k} is not a documented field")
                elif k in ENUMS and v not in ENUMS[k]:
                    self.violation(req, f"body.config.{k}={v!r} is not documented")

    # -- helpers --------------------------------------------------------------------------------------
    def paginate(self, req, items):
        per = int(req["query"].get("per_page", 30))
        page = int(req["query"].get("page", 1))
        last = max(1, -(-len(items) // per))
        chunk = items[(page - 1) * per: page * per]
        base = f"{self.base_url}{req['path']}"

        def url(p):
            q = {k: v for k, v in req["query"].items() if k != "page"}
            q["page"] = p
            return f"<{base}?{urlencode(q)}>"
        links = []
        if page < last:
            links += [f'{url(page + 1)}; rel="next"', f'{url(last)}; rel="last"']
        if page > 1:
            links += [f'{url(1)}; rel="first"', f'{url(page - 1)}; rel="prev"']
        return chunk, ({"Link": ", ".join(links)} if links else {})

    def visible(self, repo, authed):
        return not repo["private"] or authed is not None

    def repo_list(self, owner, authed, only_public=False):
        return sorted((r for r in self.state["repos"].values()
                       if r["owner"]["login"] == owner and self.visible(r, authed) and not (only_public and r["private"])),
                      key=lambda r: r["full_name"])

    def get_repo(self, owner, repo, authed):
        r = self.state["repos"].get(f"{owner}/{repo}")
        if r is None or not self.visible(r, authed):
            raise Reply(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest/repos/repos#get-a-repository"})
        return r

    # -- endpoints ------------------------------------------------------------------------------------
    def h_get_user(self, req, authed):
        if authed is None:
            raise Reply(401, {"message": "Requires authentication"})
        return 200, {"login": self.state["viewer"], "id": 1, "type": "User"}, {}

    def h_get_users_username(self, req, authed, username):
        a = self.state["accounts"].get(username)
        if a is None:
            raise Reply(404, {"message": "Not Found"})
        return 200, {"login": username, "id": abs(hash(username)) % 10000, "type": a["type"]}, {}

    def h_get_orgs_org_repos(self, req, authed, org):
        if self.state["accounts"].get(org, {}).get("type") != "Organization":
            raise Reply(404, {"message": "Not Found"})
        chunk, h = self.paginate(req, self.repo_list(org, authed))
        return 200, chunk, h

    def h_get_users_username_repos(self, req, authed, username):
        chunk, h = self.paginate(req, self.repo_list(username, authed, only_public=True))
        return 200, chunk, h

    def h_get_user_repos(self, req, authed):
        if authed is None:
            raise Reply(401, {"message": "Requires authentication"})
        chunk, h = self.paginate(req, self.repo_list(self.state["viewer"], authed))
        return 200, chunk, h

    def h_get_repos_owner_repo(self, req, authed, owner, repo):
        return 200, self.get_repo(owner, repo, authed), {}

    def hooks_of(self, owner, repo, authed):
        r = self.get_repo(owner, repo, authed)
        if authed is None:
            raise Reply(404, {"message": "Not Found"})
        return self.state["hooks"].setdefault(r["full_name"], [])

    def public_hook(self, h):
        cfg = dict(h["config"])
        if "secret" in cfg:
            cfg["secret"] = "********"
        return {**h, "config": cfg}

    def h_get_repos_owner_repo_hooks(self, req, authed, owner, repo):
        chunk, h = self.paginate(req, [self.public_hook(x) for x in self.hooks_of(owner, repo, authed)])
        return 200, chunk, h

    def h_post_repos_owner_repo_hooks(self, req, authed, owner, repo):
        hooks = self.hooks_of(owner, repo, authed)
        b = req["body"]
        if any(h["config"]["url"] == b["config"]["url"] for h in hooks):
            raise Reply(422, {"message": "Validation Failed", "errors": [{"resource": "Hook", "code": "custom", "message": "Hook already exists on this repository"}]})
        t = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        hook = {"type": "Repository", "id": next(_ids), "name": "web", "active": b.get("active", True),
                "events": b.get("events", ["push"]), "config": dict(b["config"]), "updated_at": t, "created_at": t,
                "url": f"{self.base_url}/repos/{owner}/{repo}/hooks"}
        hook["config"].setdefault("content_type", "form")
        hook["config"].setdefault("insecure_ssl", "0")
        hooks.append(hook)
        return 201, self.public_hook(hook), {}

    def h_patch_repos_owner_repo_hooks_hook_id(self, req, authed, owner, repo, hook_id):
        for h in self.hooks_of(owner, repo, authed):
            if str(h["id"]) == hook_id:
                b = req["body"]
                for k in ("active", "events"):
                    if k in b:
                        h[k] = b[k]
                if "config" in b:
                    h["config"].update(b["config"])
                return 200, self.public_hook(h), {}
        raise Reply(404, {"message": "Not Found"})


if __name__ == "__main__":
    serve(FakeGitHub)
