"""Validate HTTP requests (and the fake's own answers) against a Swagger 2.0 document, read at test time.

Checked for every request: the path matches a documented path template under basePath, the method is
documented for it, required path/query parameters are present, query parameters are documented and of the
documented type, and a JSON body matches the body parameter's schema: required properties, property types,
enums, no undocumented properties. Schemas that state their required keys only in prose (Gitea's
CreateHookOptionConfig: 'required are "content_type" and "url"') are honoured too.
"""
from __future__ import annotations

import json
import re


class Swagger:
    def __init__(self, path: str):
        with open(path) as f:
            self.doc = json.load(f)
        self.base = self.doc.get("basePath", "")
        routes = []
        for template, item in self.doc["paths"].items():
            segs = template.strip("/").split("/")
            names = re.findall(r"\{([^}]+)\}", template)
            rx = "^" + re.escape(self.base) + "/" + "/".join(
                re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(s)) for s in segs) + "$"
            literal = sum(1 for s in segs if "{" not in s)
            routes.append((literal, template, re.compile(rx), item, names))
        # Prefer the template with most literal segments (/repos/search over /repos/{owner}).
        routes.sort(key=lambda r: -r[0])
        self.routes = routes

    def match(self, path: str):
        for _, template, rx, item, names in self.routes:
            m = rx.match(path)
            if m:
                return template, dict(zip(names, m.groups())), item
        return None

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(ref)
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part]
            schema = node
        return schema

    def check_request(self, method: str, path: str, query: dict, body, has_body: bool) -> tuple[list[str], str | None, dict]:
        """Returns (problems, template, operation)."""
        m = self.match(path)
        if not m:
            return [f"path {path} is not in the API document"], None, {}
        template, params, item = m
        op = item.get(method.lower())
        if op is None:
            return [f"{method} is not documented for {template}"], template, {}
        problems = []
        declared = item.get("parameters", []) + op.get("parameters", [])
        for p in declared:
            p = self.resolve(p)
            where, name = p.get("in"), p.get("name")
            if where == "path":
                if not params.get(name):
                    problems.append(f"path parameter {name} is empty")
                else:
                    problems += self._check_scalar(params[name], p, f"path {name}")
            if where == "query":
                if p.get("required") and name not in query:
                    problems.append(f"required query parameter {name} missing")
                if name in query:
                    problems += self._check_scalar(query[name], p, f"query {name}")
        known_q = {self.resolve(p).get("name") for p in declared if self.resolve(p).get("in") == "query"}
        for q in query:
            if q not in known_q:
                problems.append(f"query parameter {q} is not documented for {method} {template}")
        body_params = [self.resolve(p) for p in declared if self.resolve(p).get("in") == "body"]
        if body_params:
            bp = body_params[0]
            if not has_body:
                if bp.get("required"):
                    problems.append("required body missing")
            else:
                problems += self.check_value(body, bp["schema"], "body", request=True)
        elif has_body and body not in (None, {}, ""):
            problems.append(f"{method} {template} takes no body, got {json.dumps(body)[:80]}")
        return problems, template, op

    def response_schema(self, op: dict, status: int):
        r = op.get("responses", {}).get(str(status))
        if r is None:
            return None
        r = self.resolve(r)
        return r.get("schema")

    def _check_scalar(self, value: str, p: dict, where: str) -> list[str]:
        t = p.get("type")
        if t == "integer" and not re.fullmatch(r"-?\d+", value):
            return [f"{where}={value!r} is not an integer"]
        if t == "boolean" and value not in ("true", "false"):
            return [f"{where}={value!r} is not a boolean"]
        return []

    def check_value(self, value, schema: dict, where: str, request: bool) -> list[str]:
        schema = self.resolve(schema)
        t = schema.get("type")
        if "enum" in schema and value not in schema["enum"]:
            return [f"{where}={value!r} not one of {schema['enum']}"]
        if t == "object" or "properties" in schema:
            if not isinstance(value, dict):
                return [f"{where} should be an object"]
            problems = []
            required = list(schema.get("required", []))
            prose = re.search(r"required are (.+?) Required", schema.get("description", ""))
            if prose and request:
                required += re.findall(r'"([^"]+)"', prose.group(1))
            if request:
                for r in required:
                    if r not in value:
                        problems.append(f"{where}.{r} is required")
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for k, v in value.items():
                if k in props:
                    if v is None and not request:
                        continue
                    problems += self.check_value(v, props[k], f"{where}.{k}", request)
                elif isinstance(extra, dict):
                    problems += self.check_value(v, extra, f"{where}.{k}", request)
                elif props or extra is False:
                    problems.append(f"{where}.{k} is not a documented property")
            return problems
        if t == "array":
            if not isinstance(value, list):
                return [f"{where} should be an array"]
            out = []
            for i, v in enumerate(value):
                out += self.check_value(v, schema.get("items", {}), f"{where}[{i}]", request)
            return out
        if t == "string" and not isinstance(value, str):
            return [f"{where} should be a string, got {json.dumps(value)}"]
        if t == "boolean" and not isinstance(value, bool):
            return [f"{where} should be a boolean, got {json.dumps(value)}"]
        if t == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
            return [f"{where} should be an integer, got {json.dumps(value)}"]
        if t == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return [f"{where} should be a number"]
        return []
