"""A fake Gitea for the Nushell tests: checks every call against the Gitea 1.22 API document
(../../../../shared/reference/forgejo-11-gitea-1.22-api.swagger.json, path given by --swagger) and answers
like Gitea for the endpoints raibid-ci's scripts use. Any undocumented call, or a documented one this fake
does not implement, is a violation the tests assert on; the fake's own answers are checked against the
documented response schemas too, so it cannot drift from Gitea's shapes.

State (JSON, --state): {"users": {login: {"token", "password", "is_admin"}}, "orgs": {name: {"owner"}},
"repos": {full_name: Repository}, "hooks": {full_name: [Hook]}, "statuses": {full_name: state},
"tokens": {login: {name: value}}, "token_scopes": {login: {name: [scope]}},
"teams": {id: {"org", "name", "permission", "units_map", "includes_all_repositories", "can_create_org_repo", "members"}}}

Authentication as Gitea does it: `Authorization: token …` or Basic; the `Sudo` header makes a site admin act as
another user (anyone else gets 403). The token endpoints act on the *authenticated* user: a call for another
user's tokens without Sudo is a violation, because Gitea versions disagree on it (1.20 created the token for the
caller, go-gitea/gitea#26234; DELETE only ever removes the caller's).
"""
from __future__ import annotations

import base64
import datetime as dt
import itertools
import re

from fakebase import FakeServer, Reply, serve
from swagger import Swagger

_ids = itertools.count(100)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def go_duration(text: str) -> int:
    parts = re.findall(r"(\d+)(h|m|s)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        raise Reply(422, {"message": f"invalid mirror interval {text!r}"})
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def go_format(secs: int) -> str:
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else (f"{m}m{s}s" if m else f"{s}s")


class FakeGitea(FakeServer):
    def __init__(self, state, args):
        super().__init__(state)
        self.swagger = Swagger(args.swagger)
        for k in ("users", "orgs", "repos", "hooks", "statuses", "tokens", "syncs", "token_scopes", "teams"):
            state.setdefault(k, {})

    # -- helpers --------------------------------------------------------------------------------------
    def user_obj(self, login: str) -> dict:
        return {"id": abs(hash(login)) % 10000, "login": login, "full_name": login,
                "email": f"{login}@example.invalid", "is_admin": bool(self.state["users"].get(login, {}).get("is_admin"))}

    def authenticate(self, req) -> str | None:
        if "token" in req["query"] or "access_token" in req["query"]:
            self.violation(req, "token passed in the query string (deprecated; use the Authorization header)")
        auth = req["headers"].get("authorization", "")
        if auth.startswith("token ") or auth.startswith("Bearer "):
            tok = auth.split(" ", 1)[1]
            for login, u in self.state["users"].items():
                if tok == u.get("token") or tok in self.state["tokens"].get(login, {}).values():
                    return login
            raise Reply(401, {"message": "user does not exist", "url": self.base_url + "/api/swagger"})
        if auth.startswith("Basic "):
            login, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            if self.state["users"].get(login, {}).get("password") == pw:
                return login
            raise Reply(401, {"message": "user's password is invalid", "url": self.base_url + "/api/swagger"})
        return None

    def sudo(self, req, user: str | None) -> str | None:
        """Gitea's sudo(): a site admin acts as the user the Sudo header (or ?sudo=) names."""
        target = req["headers"].get("sudo") or req["query"].get("sudo")
        if not target or user is None:
            return user
        if not self.is_admin(user):
            raise Reply(403, {"message": "Only administrators allowed to sudo."})
        if target not in self.state["users"]:
            raise Reply(404, {"message": "user does not exist"})
        return target

    def is_admin(self, login: str | None) -> bool:
        return bool(login and self.state["users"].get(login, {}).get("is_admin"))

    def require_admin(self, user: str) -> None:
        if not self.is_admin(user):
            raise Reply(403, {"message": "reqSiteAdmin"})

    def own_tokens(self, req, user: str, username: str) -> None:
        """reqSelfOrAdmin + reqBasicOrRevProxyAuth on /users/{username}/tokens; acting on another user's tokens
        without Sudo differs between Gitea versions (see the module doc): a violation."""
        if username not in self.state["users"]:
            raise Reply(404, {"message": "user does not exist"})
        if user != username:
            if not self.is_admin(user):
                raise Reply(403, {"message": "reqSelfOrAdmin"})
            self.violation(req, f"{username}'s tokens handled by {user} without Sudo: Gitea 1.20 acts on the caller (go-gitea/gitea#26234)")

    def org_members(self, org: str) -> set:
        members = {self.state["orgs"][org].get("owner")} if org in self.state["orgs"] else set()
        for tm in self.state["teams"].values():
            if tm["org"] == org:
                members |= set(tm["members"])
        return members - {None}

    def team_obj(self, tid: str) -> dict:
        tm = self.state["teams"][tid]
        return {"id": int(tid), "name": tm["name"], "description": tm.get("description", ""),
                "permission": tm["permission"], "units_map": tm["units_map"], "units": sorted(tm["units_map"]),
                "includes_all_repositories": tm["includes_all_repositories"],
                "can_create_org_repo": tm["can_create_org_repo"],
                "organization": {"id": abs(hash(tm["org"])) % 10000, "name": tm["org"], "username": tm["org"]}}

    def team(self, tid: str) -> dict:
        if tid not in self.state["teams"]:
            raise Reply(404, {"message": "team does not exist"})
        return self.state["teams"][tid]

    def repo(self, owner: str, name: str) -> dict:
        r = self.state["repos"].get(f"{owner}/{name}")
        if r is None:
            raise Reply(404, {"message": "The target couldn't be found.", "url": self.base_url + "/api/swagger", "errors": []})
        return r

    def owner_exists(self, owner: str) -> bool:
        return owner in self.state["users"] or owner in self.state["orgs"]

    def new_repo(self, owner: str, name: str, **fields) -> dict:
        full = f"{owner}/{name}"
        if full in self.state["repos"]:
            raise Reply(409, {"message": "The repository with the same name already exists."})
        r = {
            "id": next(_ids), "name": name, "full_name": full, "owner": self.user_obj(owner),
            "description": fields.get("description", ""), "private": bool(fields.get("private", False)),
            "mirror": bool(fields.get("mirror", False)), "mirror_interval": fields.get("mirror_interval", ""),
            "mirror_updated": now() if fields.get("mirror") else None, "original_url": fields.get("original_url", ""),
            "clone_url": f"{self.base_url}/{full}.git", "html_url": f"{self.base_url}/{full}",
            "default_branch": "main", "empty": bool(fields.get("empty", False)), "created_at": now(), "updated_at": now(),
        }
        self.state["repos"][full] = r
        self.state["hooks"].setdefault(full, [])
        return r

    # -- dispatch -------------------------------------------------------------------------------------
    def handle(self, req):
        has_body = bool(req["raw"])
        if has_body and "application/json" not in req["headers"].get("content-type", ""):
            self.violation(req, f"JSON body sent with Content-Type {req['headers'].get('content-type')!r}")
        problems, template, op = self.swagger.check_request(req["method"], req["path"], req["query"], req["body"], has_body)
        for p in problems:
            self.violation(req, p)
        if template is None or not op:
            return 404, {"message": "not found"}, {}
        try:
            user = self.sudo(req, self.authenticate(req))
        except Reply as r:
            return r.status, r.body, r.headers
        if user is None and template not in ("/version",):
            return 401, {"message": "token is required", "url": self.base_url + "/api/swagger"}, {}
        fn = getattr(self, "h_" + req["method"].lower() + re.sub(r"[^a-z]+", "_", template.lower()).rstrip("_"), None)
        if fn is None:
            self.violation(req, f"the fake does not implement {req['method']} {template}")
            return 501, {"message": "not implemented by the fake"}, {}
        params = self.swagger.match(req["path"])[1]
        try:
            status, body, headers = fn(req, user, **params)
        except Reply as r:
            status, body, headers = r.status, r.body, r.headers
        schema = self.swagger.response_schema(op, status)
        if schema is not None and body is not None:
            for p in self.swagger.check_value(body, schema, "response", request=False):
                self.violation(req, "fake answer drifts from the API document: " + p)
        elif str(status) not in op.get("responses", {}):
            self.violation(req, f"the fake answered {status}, which the API document does not list")
        return status, body, headers

    # -- endpoints ------------------------------------------------------------------------------------
    def h_get_version(self, req, user):
        return 200, {"version": "1.22.0"}, {}

    def h_get_user(self, req, user):
        return 200, self.user_obj(user), {}

    def h_get_users_username(self, req, user, username):
        if username not in self.state["users"]:
            raise Reply(404, {"message": "user does not exist"})
        return 200, self.user_obj(username), {}

    def h_get_orgs_org(self, req, user, org):
        if org not in self.state["orgs"]:
            raise Reply(404, {"message": "org does not exist"})
        return 200, {"id": abs(hash(org)) % 10000, "name": org, "username": org, "full_name": org,
                     "visibility": self.state["orgs"][org].get("visibility", "public")}, {}

    def h_post_orgs(self, req, user):
        name = req["body"]["username"]
        if self.owner_exists(name):
            raise Reply(422, {"message": "user already exists"})
        self.state["orgs"][name] = {"visibility": req["body"].get("visibility", "public"), "owner": user}
        return 201, {"id": next(_ids), "name": name, "username": name, "full_name": name,
                     "visibility": self.state["orgs"][name]["visibility"]}, {}

    def h_get_repos_owner_repo(self, req, user, owner, repo):
        return 200, self.repo(owner, repo), {}

    def h_patch_repos_owner_repo(self, req, user, owner, repo):
        r = self.repo(owner, repo)
        b = req["body"] or {}
        if "mirror_interval" in b:
            if not r["mirror"]:
                raise Reply(422, {"message": "not a mirror"})
            r["mirror_interval"] = go_format(go_duration(b["mirror_interval"]))
        for k in ("private", "description"):
            if k in b:
                r[k] = b[k]
        return 200, r, {}

    def h_post_repos_migrate(self, req, user):
        b = req["body"]
        owner = b.get("repo_owner") or user
        if not self.owner_exists(owner):
            raise Reply(422, {"message": f"owner {owner} does not exist"})
        interval = ""
        if b.get("mirror"):
            secs = go_duration(b.get("mirror_interval", "8h0m0s"))
            if 0 < secs < 600:
                raise Reply(422, {"message": "mirror interval is less than the minimum of 10m"})
            interval = go_format(secs)
        r = self.new_repo(owner, b["repo_name"], description=b.get("description", ""), private=b.get("private", False),
                          mirror=b.get("mirror", False), mirror_interval=interval, original_url=b["clone_addr"])
        return 201, r, {}

    def h_post_repos_owner_repo_mirror_sync(self, req, user, owner, repo):
        r = self.repo(owner, repo)
        if not r["mirror"]:
            raise Reply(403, {"message": "Repository is not a mirror"})
        self.state["syncs"][r["full_name"]] = self.state["syncs"].get(r["full_name"], 0) + 1
        r["mirror_updated"] = now()
        return 200, None, {}

    def _page(self, req, items, path):
        page = int(req["query"].get("page", 1))
        limit = int(req["query"].get("limit", 30))
        chunk = items[(page - 1) * limit: page * limit]
        headers = {"X-Total-Count": len(items)}
        links = []
        last = max(1, -(-len(items) // limit))
        if page < last:
            links.append(f'<{self.base_url}{path}?page={page + 1}&limit={limit}>; rel="next"')
            links.append(f'<{self.base_url}{path}?page={last}&limit={limit}>; rel="last"')
        if links:
            headers["Link"] = ", ".join(links)
        return chunk, headers

    def h_get_repos_search(self, req, user):
        mode = req["query"].get("mode")
        items = sorted(self.state["repos"].values(), key=lambda r: r["full_name"])
        if mode == "mirror":
            items = [r for r in items if r["mirror"]]
        chunk, headers = self._page(req, items, req["path"])
        return 200, {"ok": True, "data": chunk}, headers

    def h_get_repos_owner_repo_hooks(self, req, user, owner, repo):
        r = self.repo(owner, repo)
        hooks = [{k: v for k, v in h.items() if k != "secret"} for h in self.state["hooks"][r["full_name"]]]
        chunk, headers = self._page(req, hooks, req["path"])
        return 200, chunk, headers

    def h_post_repos_owner_repo_hooks(self, req, user, owner, repo):
        r = self.repo(owner, repo)
        b = req["body"]
        cfg = b["config"]
        hook = {"id": next(_ids), "type": b["type"], "active": bool(b.get("active", False)),
                "events": b.get("events") or ["push"], "branch_filter": b.get("branch_filter", "*"),
                "authorization_header": "", "config": {"url": cfg["url"], "content_type": cfg["content_type"]},
                "secret": cfg.get("secret", ""), "created_at": now(), "updated_at": now()}
        self.state["hooks"][r["full_name"]].append(hook)
        return 201, {k: v for k, v in hook.items() if k != "secret"}, {}

    def h_patch_repos_owner_repo_hooks_id(self, req, user, owner, repo, id):
        r = self.repo(owner, repo)
        for h in self.state["hooks"][r["full_name"]]:
            if str(h["id"]) == id:
                b = req["body"] or {}
                for k in ("active", "events", "branch_filter"):
                    if k in b:
                        h[k] = b[k]
                if "config" in b:
                    c = dict(b["config"])
                    if "secret" in c:
                        h["secret"] = c.pop("secret")
                    h["config"].update(c)
                h["updated_at"] = now()
                return 200, {k: v for k, v in h.items() if k != "secret"}, {}
        raise Reply(404, {"message": "hook not found"})

    def h_get_repos_owner_repo_commits_ref_status(self, req, user, owner, repo, ref):
        r = self.repo(owner, repo)
        state = self.state["statuses"].get(r["full_name"])
        statuses = [] if state is None else [{"id": 1, "status": state, "context": "raibid-ci", "description": "",
                                               "target_url": "", "created_at": now(), "updated_at": now()}]
        return 200, {"state": state or "", "sha": "0" * 40, "total_count": len(statuses), "statuses": statuses,
                     "repository": r, "commit_url": "", "url": ""}, {}

    # Used by bootstrap: tokens and the ops repository.
    def h_get_users_username_tokens(self, req, user, username):
        self.own_tokens(req, user, username)
        toks = self.state["tokens"].get(username, {})
        scopes = self.state["token_scopes"].get(username, {})
        return 200, [{"id": i + 1, "name": n, "scopes": scopes.get(n, ["all"]), "token_last_eight": t[-8:]}
                     for i, (n, t) in enumerate(toks.items())], {}

    def h_post_users_username_tokens(self, req, user, username):
        if not req["headers"].get("authorization", "").startswith("Basic "):
            raise Reply(403, {"message": "tokens can only be created with basic authentication"})
        self.own_tokens(req, user, username)
        name = req["body"]["name"]
        toks = self.state["tokens"].setdefault(username, {})
        if name in toks:
            raise Reply(400, {"message": "access token name has been used already"})
        # Distinct per user and per creation, so a replaced token has a new value (and last eight).
        n = self.state.setdefault("token_serial", 0) + 1
        self.state["token_serial"] = n
        toks[name] = (base64.b16encode(f"{username}/{name}".encode()).decode().lower()[:32] + f"{n:08x}")[-40:].rjust(40, "0")
        self.state["token_scopes"].setdefault(username, {})[name] = req["body"].get("scopes", [])
        return 201, {"id": len(toks), "name": name, "scopes": req["body"].get("scopes", []), "sha1": toks[name],
                     "token_last_eight": toks[name][-8:]}, {}

    def h_delete_users_username_tokens_token(self, req, user, username, token):
        if not req["headers"].get("authorization", "").startswith("Basic "):
            raise Reply(403, {"message": "tokens can only be deleted with basic authentication"})
        self.own_tokens(req, user, username)
        toks = self.state["tokens"].get(username, {})
        for i, name in enumerate(list(toks)):
            if token in (name, str(i + 1)):
                del toks[name]
                self.state["token_scopes"].get(username, {}).pop(name, None)
                return 204, None, {}
        raise Reply(404, {"message": "token not found"})

    # Users, organisation membership and teams (bootstrap's image push user, ADR 0012).
    def h_post_admin_users(self, req, user):
        self.require_admin(user)
        b = req["body"]
        name = b["username"]
        if self.owner_exists(name):
            raise Reply(422, {"message": "user already exists [name: %s]" % name})
        if not b.get("password"):
            raise Reply(400, {"message": "password is required for a local user"})
        self.state["users"][name] = {"password": b["password"], "is_admin": False, "email": b["email"],
                                     "must_change_password": b.get("must_change_password", True),
                                     "visibility": b.get("visibility", "public")}
        return 201, self.user_obj(name), {}

    def h_patch_admin_users_username(self, req, user, username):
        self.require_admin(user)
        u = self.state["users"].get(username)
        if u is None:
            raise Reply(422, {"message": "user does not exist"})
        b = req["body"] or {}
        if "admin" in b:
            u["is_admin"] = bool(b["admin"])
        for k in ("password", "must_change_password", "prohibit_login", "visibility", "restricted"):
            if k in b:
                u[k] = b[k]
        return 200, self.user_obj(username), {}

    def h_get_orgs_org_members_username(self, req, user, org, username):
        if org not in self.state["orgs"] or username not in self.state["users"]:
            raise Reply(404, {"message": "not found"})
        if user not in self.org_members(org) and not self.is_admin(user):
            return 303, None, {"Location": f"{self.base_url}/api/v1/orgs/{org}/public_members/{username}"}
        return (204, None, {}) if username in self.org_members(org) else (404, None, {})

    def h_delete_orgs_org_members_username(self, req, user, org, username):
        if org not in self.state["orgs"]:
            raise Reply(404, {"message": "org does not exist"})
        if not (self.is_admin(user) or self.state["orgs"][org].get("owner") == user):
            raise Reply(403, {"message": "not an owner of the organization"})
        for tm in self.state["teams"].values():
            if tm["org"] == org and username in tm["members"]:
                tm["members"].remove(username)
        return 204, None, {}

    def h_get_orgs_org_teams(self, req, user, org):
        if org not in self.state["orgs"]:
            raise Reply(404, {"message": "org does not exist"})
        items = [self.team_obj(tid) for tid, tm in sorted(self.state["teams"].items(), key=lambda x: int(x[0])) if tm["org"] == org]
        chunk, headers = self._page(req, items, req["path"])
        return 200, chunk, headers

    def h_post_orgs_org_teams(self, req, user, org):
        if org not in self.state["orgs"]:
            raise Reply(404, {"message": "org does not exist"})
        if not (self.is_admin(user) or self.state["orgs"][org].get("owner") == user):
            raise Reply(403, {"message": "not an owner of the organization"})
        b = req["body"]
        if any(tm["org"] == org and tm["name"].lower() == b["name"].lower() for tm in self.state["teams"].values()):
            raise Reply(422, {"message": "team already exists"})
        tid = str(next(_ids))
        self.state["teams"][tid] = {"org": org, "members": []}
        self._set_team(tid, b)
        return 201, self.team_obj(tid), {}

    def _set_team(self, tid: str, b: dict) -> None:
        tm = self.state["teams"][tid]
        order = ["none", "read", "write", "admin", "owner"]
        perm = b.get("permission", tm.get("permission", "read"))
        units = b.get("units_map")
        if units is not None:
            for v in units.values():
                if v not in order:
                    raise Reply(422, {"message": f"invalid unit access mode {v!r}"})
            tm["units_map"] = dict(units)
            if order.index(perm) < order.index("admin") and units:
                # Gitea: with a units map, the team's mode is the smallest of its units' (MinUnitAccessMode).
                perm = min((v for v in units.values() if v != "none"), key=order.index, default="none")
        tm.setdefault("units_map", {})
        tm["name"] = b.get("name", tm.get("name"))
        tm["description"] = b.get("description", tm.get("description", ""))
        tm["permission"] = perm
        tm["includes_all_repositories"] = bool(b.get("includes_all_repositories", tm.get("includes_all_repositories", False)))
        tm["can_create_org_repo"] = bool(b.get("can_create_org_repo", tm.get("can_create_org_repo", False)))

    def h_get_teams_id(self, req, user, id):
        self.team(id)
        return 200, self.team_obj(id), {}

    def h_patch_teams_id(self, req, user, id):
        tm = self.team(id)
        if not (self.is_admin(user) or self.state["orgs"][tm["org"]].get("owner") == user):
            raise Reply(403, {"message": "not an owner of the organization"})
        self._set_team(id, req["body"] or {})
        return 200, self.team_obj(id), {}

    def h_get_teams_id_members_username(self, req, user, id, username):
        tm = self.team(id)
        if username not in tm["members"]:
            raise Reply(404, {"message": "not a member"})
        return 200, self.user_obj(username), {}

    def h_put_teams_id_members_username(self, req, user, id, username):
        tm = self.team(id)
        if not (self.is_admin(user) or self.state["orgs"][tm["org"]].get("owner") == user):
            raise Reply(403, {"message": "not an owner of the organization"})
        if username not in self.state["users"]:
            raise Reply(404, {"message": "user does not exist"})
        if username not in tm["members"]:
            tm["members"].append(username)
        return 204, None, {}

    def h_post_orgs_org_repos(self, req, user, org):
        if org not in self.state["orgs"]:
            raise Reply(404, {"message": "org does not exist"})
        r = self.new_repo(org, req["body"]["name"], private=req["body"].get("private", False),
                          description=req["body"].get("description", ""), empty=True)
        return 201, r, {}

    def h_get_repos_owner_repo_branches_branch(self, req, user, owner, repo, branch):
        r = self.repo(owner, repo)
        sha = self.state.setdefault("branches", {}).get(f"{r['full_name']}:{branch}")
        if sha is None:
            raise Reply(404, {"message": "branch does not exist"})
        return 200, {"name": branch, "commit": {"id": sha, "message": "", "url": ""}, "protected": False}, {}

    def h_get_packages_owner_type_name_version(self, req, user, owner, type, name, version):
        key = f"{owner}/{type}/{name}/{version}"
        if key not in self.state.setdefault("packages", []):
            raise Reply(404, {"message": "package does not exist"})
        return 200, {"id": 1, "name": name, "type": type, "version": version, "created_at": now()}, {}

    def h_post_user_repos(self, req, user):
        r = self.new_repo(user, req["body"]["name"], private=req["body"].get("private", False),
                          description=req["body"].get("description", ""), empty=True)
        return 201, r, {}


if __name__ == "__main__":
    serve(FakeGitea)
