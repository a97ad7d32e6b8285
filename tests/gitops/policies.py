"""Policy checks over rendered objects. Each check takes the list of objects Flux would apply and returns a list of
error messages; tests/gitops/fixtures/ holds one negative fixture per check (test_policies.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import yaml

import gitops
from gitops import ROOT, describe

Obj = dict
Check = Callable[[list[Obj]], list[str]]

POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
SYSTEM_NAMESPACES = {"kube-system", "flux-system", "default", "kube-public", "kube-node-lease"}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def pod_specs(objs: list[Obj]) -> Iterator[tuple[Obj, dict]]:
    """(owner object, pod spec) for every pod template in the objects, ScaledJob included."""
    for o in objs:
        kind = o.get("kind")
        spec = o.get("spec") or {}
        if kind in POD_OWNERS:
            yield o, ((spec.get("template") or {}).get("spec") or {})
        elif kind == "CronJob":
            yield o, (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        elif kind == "Pod":
            yield o, spec
        elif kind == "ScaledJob":
            yield o, (((spec.get("jobTargetRef") or {}).get("template") or {}).get("spec") or {})


def containers(pod: dict, init: bool = True) -> list[dict]:
    return list(pod.get("containers") or []) + (list(pod.get("initContainers") or []) if init else [])


def find(objs: list[Obj], kind: str, name: str | None = None, namespace: str | None = None) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind
            and (name is None or o["metadata"].get("name") == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]


def env_of(container: dict, objs: list[Obj], namespace: str | None) -> dict[str, dict]:
    """Env var name -> its source ({"value": ...} or {"valueFrom": ...} or {"configMap": name}), envFrom included."""
    env: dict[str, dict] = {}
    for ef in container.get("envFrom") or []:
        ref = ef.get("configMapRef")
        if ref:
            for cm in find(objs, "ConfigMap", ref.get("name"), namespace):
                for k, v in (cm.get("data") or {}).items():
                    env[(ef.get("prefix") or "") + k] = {"value": v, "configMap": ref.get("name")}
        if ef.get("secretRef"):
            env[f"<all keys of Secret {ef['secretRef'].get('name')}>"] = {"secretRef": ef["secretRef"]}
    for e in container.get("env") or []:
        env[e["name"]] = e
    return env


def resolve_env_value(entry: dict, objs: list[Obj], namespace: str | None) -> str | None:
    if "value" in entry:
        return str(entry["value"])
    ref = (entry.get("valueFrom") or {}).get("configMapKeyRef")
    if ref:
        for cm in find(objs, "ConfigMap", ref.get("name"), namespace):
            v = (cm.get("data") or {}).get(ref.get("key"))
            if v is not None:
                return str(v)
    return None


def agents(objs: list[Obj]) -> list[tuple[Obj, dict, dict]]:
    """(owner, pod spec, agent container) for every raibid agent (ScaledJob and warm pool)."""
    out = []
    for owner, pod in pod_specs(objs):
        for c in containers(pod, init=False):
            if "raibid-agent" in str(c.get("image", "")) or c.get("name") == "agent":
                out.append((owner, pod, c))
    return out


def dispatchers(objs: list[Obj]) -> list[tuple[Obj, dict, dict]]:
    out = []
    for owner, pod in pod_specs(objs):
        for c in containers(pod, init=False):
            if "raibid-dispatcher" in str(c.get("image", "")) or c.get("name") == "dispatcher":
                out.append((owner, pod, c))
    return out


def redis_host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


def service_address(objs: list[Obj], name: str, namespace: str, port: int) -> str | None:
    """`name.namespace.svc:port` when a Service of that name exposes that port."""
    for svc in find(objs, "Service", name, namespace):
        if any(int(p.get("port", 0)) == port for p in (svc["spec"].get("ports") or [])):
            return f"{name}.{namespace}.svc:{port}"
    return None


# ---------------------------------------------------------------------------------------------------------
# 1. the ScaledJob and the agents/dispatcher speak the Rust contract
# ---------------------------------------------------------------------------------------------------------


def check_scaledjob(objs: list[Obj]) -> list[str]:
    c = gitops.read_contract()
    keys, env = c["keys"], c["env"]
    errs: list[str] = []
    sjs = find(objs, "ScaledJob")
    if not sjs:
        return ["no KEDA ScaledJob for the agents"]
    redis = service_address(objs, "redis", "raibid-system", 6379)
    if not redis:
        errs.append("no Service redis in raibid-system exposing 6379 (the ScaledJob's Redis address)")
    for sj in sjs:
        d, spec = describe(sj), sj.get("spec") or {}
        ns = sj["metadata"].get("namespace")
        triggers = spec.get("triggers") or []
        streams = [t for t in triggers if t.get("type") == "redis-streams"]
        if len(streams) != 1 or len(triggers) != 1:
            errs.append(f"{d}: needs exactly one trigger, of type redis-streams (has {[t.get('type') for t in triggers]})")
        for t in streams:
            md = t.get("metadata") or {}
            want = {"stream": keys["JOBS_STREAM"], "consumerGroup": keys["AGENTS_GROUP"],
                    "lagCount": "1", "activationLagCount": "0"}
            for k, v in want.items():
                if md.get(k) != v:
                    errs.append(f"{d}: trigger metadata.{k} is {md.get(k)!r}, must be {v!r}")
            for k in ("pendingEntriesCount", "streamLength"):
                if k in md:
                    errs.append(f"{d}: trigger metadata.{k} set: the trigger must scale on the group's lag only "
                                f"(XPENDING cannot start a job from zero)")
            if redis and md.get("address") != redis:
                errs.append(f"{d}: trigger address {md.get('address')!r} is not the Redis Service {redis!r}")
            ref = (t.get("authenticationRef") or {}).get("name")
            if not ref or not find(objs, "TriggerAuthentication", ref, ns):
                errs.append(f"{d}: trigger authenticationRef {ref!r} names no TriggerAuthentication in {ns}")
        if (spec.get("scalingStrategy") or {}).get("strategy") != "accurate":
            errs.append(f"{d}: scalingStrategy.strategy must be accurate")
        if (spec.get("rollout") or {}).get("strategy") != "gradual":
            errs.append(f"{d}: rollout.strategy must be gradual (default kills running builds on every change)")
        job = spec.get("jobTargetRef") or {}
        if job.get("backoffLimit") != 0:
            errs.append(f"{d}: jobTargetRef.backoffLimit must be 0 (the queue owns retries)")
        for k in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            if not isinstance(job.get(k), int) or job[k] <= 0:
                errs.append(f"{d}: jobTargetRef.{k} must be set")
        pod = (job.get("template") or {}).get("spec") or {}
        if pod.get("restartPolicy") != "Never":
            errs.append(f"{d}: restartPolicy must be Never")
        if not spec.get("maxReplicaCount"):
            errs.append(f"{d}: maxReplicaCount must be set")
        if spec.get("minReplicaCount", 0) != 0:
            errs.append(f"{d}: minReplicaCount must be 0 (scale to zero)")
        for cont in containers(pod, init=False):
            e = env_of(cont, objs, ns)
            once = "--once" in (cont.get("args") or []) + (cont.get("command") or []) or \
                str((e.get(env["ONCE"]) or {}).get("value", "")).lower() == "true"
            if not once:
                errs.append(f"{d}: container {cont.get('name')} does not run in --once mode ({env['ONCE']}=true)")
    return errs


AGENT_REQUIRED = ["REDIS_URL", "AGENT_NAME", "WORKSPACE_DIR", "CACHE_DIR", "ALLOWED_SCHEMES", "ALLOWED_HOSTS",
                  "GIT_USERNAME", "LEASE_SECS", ("GIT_TOKEN", "GIT_TOKEN_FILE")]
DISPATCHER_REQUIRED = ["LISTEN", "REDIS_URL", "URL", "GITEA_URL", ("API_TOKEN", "API_TOKEN_FILE"),
                       ("GITEA_WEBHOOK_SECRET", "GITEA_WEBHOOK_SECRET_FILE"),
                       ("GITHUB_WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET_FILE"), ("GITEA_TOKEN", "GITEA_TOKEN_FILE")]


def _check_env(d: str, e: dict[str, dict], required: list, env: dict[str, str]) -> list[str]:
    errs = []
    known = set(env.values())
    for name in e:
        if name.startswith("RAIBID_") and name not in known:
            errs.append(f"{d}: env {name} is not defined in contract.rs (pub mod env)")
        if name.startswith("<all keys of Secret"):
            errs.append(f"{d}: envFrom a Secret hides which variables arrive; name them (env/valueFrom or *_FILE)")
    for r in required:
        options = r if isinstance(r, tuple) else (r,)
        if not any(env[o] in e for o in options):
            errs.append(f"{d}: env {' or '.join(env[o] for o in options)} missing")
    return errs


def check_contract_env(objs: list[Obj]) -> list[str]:
    c = gitops.read_contract()
    env, http = c["env"], c["http"]
    errs: list[str] = []
    redis = service_address(objs, "redis", "raibid-system", 6379)
    ags, dps = agents(objs), dispatchers(objs)
    if not ags:
        errs.append("no agent containers found")
    if not dps:
        errs.append("no dispatcher container found")
    trigger_addresses = {(t.get("metadata") or {}).get("address")
                         for sj in find(objs, "ScaledJob") for t in (sj["spec"].get("triggers") or [])}
    for owner, pod, cont in ags + dps:
        ns = owner["metadata"].get("namespace")
        d = f"{describe(owner)} container {cont.get('name')}"
        e = env_of(cont, objs, ns)
        errs += _check_env(d, e, AGENT_REQUIRED if (owner, pod, cont) in ags else DISPATCHER_REQUIRED, env)
        url = resolve_env_value(e.get(env["REDIS_URL"], {}), objs, ns)
        if url:
            hp = redis_host_port(url)
            if redis and hp != redis:
                errs.append(f"{d}: {env['REDIS_URL']} points at {hp}, the Redis Service is {redis}")
            if (owner, pod, cont) in ags and trigger_addresses and hp not in trigger_addresses:
                errs.append(f"{d}: {env['REDIS_URL']} host {hp} differs from the ScaledJob trigger address")
    for owner, pod, cont in ags:
        d = f"{describe(owner)} container {cont.get('name')}"
        name = env_of(cont, objs, owner["metadata"].get("namespace")).get(env["AGENT_NAME"], {})
        if ((name.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") != "metadata.name":
            errs.append(f"{d}: {env['AGENT_NAME']} must come from the downward API (fieldRef metadata.name): "
                        f"one consumer per pod")
    warm = [a for a in ags if a[0]["kind"] == "Deployment"]
    if not warm:
        errs.append("no warm pool (a Deployment of long-running agents)")
    for owner, pod, cont in warm:
        d = describe(owner)
        if "--once" in (cont.get("args") or []):
            errs.append(f"{d}: the warm pool must not run --once")
        if env["CONCURRENCY"] not in env_of(cont, objs, owner["metadata"].get("namespace")):
            errs.append(f"{d}: warm agents must set {env['CONCURRENCY']}")
    port = int(http["DEFAULT_PORT"])
    for owner, pod, cont in dps:
        d = describe(owner)
        ports = {p.get("name"): p.get("containerPort") for p in cont.get("ports") or []}
        if port not in ports.values():
            errs.append(f"{d}: containerPort {port} (http::DEFAULT_PORT) missing")
        listen = resolve_env_value(env_of(cont, objs, owner["metadata"].get("namespace")).get(env["LISTEN"], {}), objs, None)
        if listen and not listen.endswith(f":{port}"):
            errs.append(f"{d}: {env['LISTEN']}={listen} is not on port {port}")
        for probe, path in (("livenessProbe", http["HEALTHZ_PATH"]), ("readinessProbe", http["READYZ_PATH"])):
            got = ((cont.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path:
                errs.append(f"{d}: {probe} path is {got!r}, must be {path!r}")
        ann = ((owner["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if ann.get("prometheus.io/path") != http["METRICS_PATH"] or ann.get("prometheus.io/port") != str(port):
            errs.append(f"{d}: metrics annotations must name {http['METRICS_PATH']} on port {port}")
    if not service_address(objs, "raibid-dispatcher", "raibid-system", port):
        errs.append(f"no Service raibid-dispatcher in raibid-system on port {port}")
    # Gitea must be allowed to deliver webhooks to the dispatcher.
    for hr in find(objs, "HelmRelease", "gitea"):
        allowed = str(((((hr["spec"].get("values") or {}).get("gitea") or {}).get("config") or {})
                       .get("webhook") or {}).get("ALLOWED_HOST_LIST", ""))
        if "raibid-dispatcher.raibid-system.svc" not in [h.strip() for h in allowed.split(",")]:
            errs.append(f"{describe(hr)}: webhook.ALLOWED_HOST_LIST does not allow raibid-dispatcher.raibid-system.svc")
    return errs


# ---------------------------------------------------------------------------------------------------------
# 2. pins: charts and images
# ---------------------------------------------------------------------------------------------------------

SEMVER = re.compile(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def check_helm_pinned(objs: list[Obj]) -> list[str]:
    errs = []
    for hr in find(objs, "HelmRelease"):
        chart = ((hr.get("spec") or {}).get("chart") or {}).get("spec") or {}
        version = str(chart.get("version", ""))
        if (hr.get("spec") or {}).get("chartRef"):
            ref = hr["spec"]["chartRef"]
            for src in find(objs, ref.get("kind", ""), ref.get("name"), ref.get("namespace") or hr["metadata"].get("namespace")):
                tag = ((src.get("spec") or {}).get("ref") or {})
                if not (tag.get("digest") or SEMVER.match(str(tag.get("tag", "")))):
                    errs.append(f"{describe(hr)}: chartRef {describe(src)} not pinned to a version or digest")
            continue
        if not SEMVER.match(version):
            errs.append(f"{describe(hr)}: chart version {version!r} is not an exact version")
        spec = hr.get("spec") or {}
        for phase in ("install", "upgrade"):
            if not (spec.get(phase) or {}).get("remediation"):
                errs.append(f"{describe(hr)}: {phase}.remediation not stated")
    return errs


IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def image_pinned(image: str) -> bool:
    m = IMAGE.match(image)
    if not m:
        return False
    name, tag, digest = m.group("name"), m.group("tag"), m.group("digest")
    if "/" in name.split(":")[-1] and tag is None and ":" in name:  # registry:port/name without tag
        return bool(digest)
    if digest:
        return True
    return bool(tag) and tag != "latest"


def check_images_pinned(objs: list[Obj]) -> list[str]:
    errs = []
    for owner, pod in pod_specs(objs):
        for c in containers(pod):
            img = str(c.get("image", ""))
            if not image_pinned(img):
                errs.append(f"{describe(owner)}: container {c.get('name')} image {img!r} has no pinned tag or digest")
    return errs


FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", re.I)
ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)")


def check_containerfiles(root: Path = ROOT) -> list[str]:
    """Every FROM of every Containerfile names a pinned tag or digest (build args resolved to their defaults)."""
    errs = []
    files = sorted((root / "containers").glob("*Containerfile*")) if (root / "containers").is_dir() else []
    if not files:
        return ["no Containerfiles under containers/"]
    for f in files:
        args: dict[str, str] = {}
        stages: set[str] = set()
        for line in f.read_text().splitlines():
            a = ARG.match(line)
            if a:
                args[a.group(1)] = a.group(2).strip('"')
            m = FROM.match(line)
            if m:
                ref = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda x: args.get(x.group(1), x.group(0)), m.group(1))
                st = re.search(r"\bAS\s+(\S+)", line, re.I)
                if ref not in stages and not image_pinned(ref):
                    errs.append(f"{rel(f)}: FROM {ref} has no pinned tag or digest")
                if st:
                    stages.add(st.group(1))
    return errs


def rel(p: Path) -> str:
    return gitops.rel(p)


# ---------------------------------------------------------------------------------------------------------
# 3. secrets: never in plaintext
# ---------------------------------------------------------------------------------------------------------

ENC = re.compile(r"^ENC\[AES256_GCM,data:.*\]$")


def secret_encrypted(doc: dict) -> bool:
    if "sops" not in doc:
        return False
    for section in ("data", "stringData"):
        for v in (doc.get(section) or {}).values():
            if not ENC.match(str(v)):
                return False
    return True


def check_no_plaintext_secrets(objs: list[Obj]) -> list[str]:
    """Rendered Secrets must still be SOPS-encrypted (Flux decrypts them in the cluster, nothing else)."""
    return [f"{describe(o)}: Secret in plaintext (encrypt it with sops, see docs/secrets.md)"
            for o in objs if o.get("kind") == "Secret" and not secret_encrypted(o)]


def repo_yaml_files(root: Path = ROOT) -> Iterator[Path]:
    skip = gitops.SKIP_DIRS
    for p in sorted(root.rglob("*")):
        if p.suffix in (".yaml", ".yml") and p.is_file() and not any(part in skip for part in p.relative_to(root).parts):
            yield p


def check_repo_secrets(root: Path = ROOT) -> list[str]:
    """No file in the repository holds a plaintext Secret; `*.sops.yaml` files are all encrypted."""
    errs = []
    for p in repo_yaml_files(root):
        try:
            docs = [d for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
        except yaml.YAMLError as e:
            errs.append(f"{gitops.rel(p)}: not YAML: {e}")
            continue
        for d in docs:
            if d.get("kind") == "Secret" and not secret_encrypted(d):
                errs.append(f"{gitops.rel(p)}: {describe(d)} is a plaintext Secret")
        if p.name.endswith(".sops.yaml") and p.name != ".sops.yaml" and not all(secret_encrypted(d) or "sops" in d for d in docs):
            errs.append(f"{gitops.rel(p)}: named *.sops.yaml but not SOPS-encrypted")
    return errs


def secrets_table(root: Path = ROOT) -> list[dict[str, str]]:
    """The layout table of docs/secrets.md: rows with file, secret, namespace, keys."""
    rows = []
    for line in (root / "docs" / "secrets.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`") and cells[0].endswith(".sops.yaml`"):
            rows.append({"file": cells[0].strip("`"), "secret": cells[1].strip("`"), "namespace": cells[2].strip("`"),
                         "keys": ",".join(re.findall(r"`([A-Za-z0-9_.-]+)`", cells[3]))})
    return rows


def check_secret_dirs(root: Path = ROOT) -> list[str]:
    """Each secrets/ directory lists only files of the docs/secrets.md table, which exist and are encrypted."""
    errs = []
    table = secrets_table(root)
    if not table:
        return ["docs/secrets.md has no secret layout table"]
    by_dir: dict[str, set[str]] = {}
    for row in table:
        by_dir.setdefault(str(Path(row["file"]).parent), set()).add(Path(row["file"]).name)
    for d, names in by_dir.items():
        k = root / d / "kustomization.yaml"
        if not k.exists():
            errs.append(f"{d}/kustomization.yaml missing (bootstrap writes the files listed in docs/secrets.md there)")
            continue
        listed = (yaml.safe_load(k.read_text()) or {}).get("resources") or []
        for r in listed:
            if r not in names:
                errs.append(f"{d}/kustomization.yaml lists {r}, not in docs/secrets.md")
            elif not (root / d / r).exists():
                errs.append(f"{d}/kustomization.yaml lists {r}, which does not exist")
    # every Secret a workload or chart references is in the table or created by bootstrap
    return errs


# ---------------------------------------------------------------------------------------------------------
# 4. workloads: resources and securityContext
# ---------------------------------------------------------------------------------------------------------


def check_workloads(objs: list[Obj]) -> list[str]:
    errs = []
    for owner, pod in pod_specs(objs):
        d = describe(owner)
        psc = pod.get("securityContext") or {}
        if not psc:
            errs.append(f"{d}: no pod securityContext")
        if pod.get("automountServiceAccountToken") is not False:
            errs.append(f"{d}: automountServiceAccountToken must be false (no workload here talks to the API)")
        for c in containers(pod):
            cd = f"{d} container {c.get('name')}"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        errs.append(f"{cd}: resources.{part}.{r} missing")
            sc = c.get("securityContext") or {}
            if not sc:
                errs.append(f"{cd}: no securityContext")
                continue
            if sc.get("privileged"):
                errs.append(f"{cd}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                errs.append(f"{cd}: allowPrivilegeEscalation must be false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                errs.append(f"{cd}: capabilities must drop ALL")
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                errs.append(f"{cd}: runAsNonRoot not set")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                errs.append(f"{cd}: seccompProfile must be RuntimeDefault or Localhost")
    return errs


# ---------------------------------------------------------------------------------------------------------
# 5. namespaces: Pod Security labels
# ---------------------------------------------------------------------------------------------------------

PSA_LEVELS = {"privileged", "baseline", "restricted"}


def check_namespaces(objs: list[Obj]) -> list[str]:
    errs = []
    minor = "v" + ".".join(gitops.kubernetes_version().split(".")[:2])
    declared = {o["metadata"]["name"] for o in find(objs, "Namespace")}
    for ns in find(objs, "Namespace"):
        labels = ns["metadata"].get("labels") or {}
        d = describe(ns)
        if labels.get("pod-security.kubernetes.io/enforce") not in PSA_LEVELS:
            errs.append(f"{d}: no pod-security.kubernetes.io/enforce label")
        for mode in ("enforce", "warn", "audit"):
            v = labels.get(f"pod-security.kubernetes.io/{mode}-version")
            if f"pod-security.kubernetes.io/{mode}" in labels and v != minor:
                errs.append(f"{d}: pod-security.kubernetes.io/{mode}-version is {v!r}, the pinned Kubernetes is {minor}")
    used = {o["metadata"].get("namespace") for o in objs if (o.get("metadata") or {}).get("namespace")}
    for ns in sorted(used - declared - SYSTEM_NAMESPACES):
        errs.append(f"namespace {ns} is used but not declared (with its Pod Security labels)")
    return errs


# ---------------------------------------------------------------------------------------------------------
# 6. Flux: the dependency chain
# ---------------------------------------------------------------------------------------------------------

CHAIN = ["infra-controllers", "infra-configs", "apps"]


def check_flux_chain(objs: list[Obj]) -> list[str]:
    errs = []
    ks = {o["metadata"]["name"]: o for o in objs
          if o.get("kind") == "Kustomization" and o.get("apiVersion", "").startswith("kustomize.toolkit.fluxcd.io/")}
    for name in CHAIN:
        if name not in ks:
            errs.append(f"Flux Kustomization {name} missing")
    graph: dict[str, list[str]] = {}
    for name, k in ks.items():
        spec = k.get("spec") or {}
        deps = [d.get("name") for d in spec.get("dependsOn") or []]
        graph[name] = deps
        for dep in deps:
            if dep not in ks:
                errs.append(f"Kustomization {name} depends on {dep}, which does not exist")
        for f in ("interval", "retryInterval", "timeout"):
            if not spec.get(f):
                errs.append(f"Kustomization {name}: spec.{f} missing")
        if spec.get("prune") is not True:
            errs.append(f"Kustomization {name}: prune must be true")
        path = spec.get("path", "")
        if not (ROOT / path).is_dir():
            errs.append(f"Kustomization {name}: path {path!r} does not exist in the repository")
        src = spec.get("sourceRef") or {}
        if not find(objs, src.get("kind", ""), src.get("name"), src.get("namespace") or k["metadata"].get("namespace")):
            errs.append(f"Kustomization {name}: sourceRef {src} not found")
        if name != "flux-system":
            dec = spec.get("decryption") or {}
            if dec.get("provider") != "sops" or (dec.get("secretRef") or {}).get("name") != "sops-age":
                errs.append(f"Kustomization {name}: SOPS decryption (sops-age) not configured")
            sub = [(s.get("kind"), s.get("name")) for s in ((spec.get("postBuild") or {}).get("substituteFrom") or [])]
            if ("ConfigMap", "cluster-settings") not in sub:
                errs.append(f"Kustomization {name}: postBuild.substituteFrom cluster-settings missing")
    # the chain: each layer depends on the previous one; controllers are waited for
    for prev, nxt in zip(CHAIN, CHAIN[1:]):
        if nxt in graph and prev not in graph[nxt]:
            errs.append(f"Kustomization {nxt} must depend on {prev}")
    if "infra-controllers" in ks and (ks["infra-controllers"].get("spec") or {}).get("wait") is not True:
        errs.append("Kustomization infra-controllers must wait: true (KEDA CRDs before configs)")
    # acyclic
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        if state.get(n) == 1:
            errs.append(f"Flux dependency cycle: {' -> '.join(stack + [n])}")
            return
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in graph.get(n, []):
            if m in graph:
                visit(m, stack + [n])
        state[n] = 2

    for n in graph:
        visit(n, [])
    # sources of HelmReleases resolve
    for hr in find(objs, "HelmRelease"):
        src = (((hr.get("spec") or {}).get("chart") or {}).get("spec") or {}).get("sourceRef") or {}
        if src and not find(objs, src.get("kind", ""), src.get("name"), src.get("namespace") or hr["metadata"].get("namespace")):
            errs.append(f"{describe(hr)}: chart sourceRef {src} not found")
    return errs


# ---------------------------------------------------------------------------------------------------------
# 7. Flux substitution: only known variables, no shell-style $VAR Flux would eat
# ---------------------------------------------------------------------------------------------------------

SHELL_VAR = re.compile(r"\$(?!\()(?!\$)([A-Za-z_{])")


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def check_substitutions(objs: list[Obj]) -> list[str]:
    """Run on objects after substitution: anything ${...} or $VAR left would be eaten or fail in Flux."""
    errs = []
    for o in objs:
        if o.get("kind") == "Secret":
            continue
        for s in _strings(o):
            m = SHELL_VAR.search(s)
            if m:
                errs.append(f"{describe(o)}: {s[max(0, m.start()-10):m.end()+20]!r}: unknown ${{...}} variable or "
                            f"shell-style $VAR (Flux postBuild would substitute it; use $(VAR) for Kubernetes env)")
    return errs


# ---------------------------------------------------------------------------------------------------------
# 8. image tags follow the Cargo workspace version
# ---------------------------------------------------------------------------------------------------------


def check_image_versions(objs: list[Obj]) -> list[str]:
    m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"',
                  (ROOT / "rust" / "Cargo.toml").read_text(), re.M | re.S)
    if not m:
        return ["rust/Cargo.toml: no [workspace.package] version"]
    errs = []
    for owner, pod in pod_specs(objs):
        for c in containers(pod):
            img = str(c.get("image", ""))
            if re.search(r"/raibid-(agent|dispatcher)(:|@|$)", img) and not img.endswith(":" + m.group(1)):
                errs.append(f"{describe(owner)}: image {img} is not tagged with the workspace version {m.group(1)}")
    return errs


# ---------------------------------------------------------------------------------------------------------
# 9. SOPS rules match the secret files
# ---------------------------------------------------------------------------------------------------------


def check_sops_rules(sops_file: Path = ROOT / ".sops.yaml", root: Path = ROOT) -> list[str]:
    """Every secret file of docs/secrets.md is matched by a rule that encrypts data/stringData for age recipients;
    no rule matches a file that is not named *.sops.yaml (tests/gitops/test_sops.py encrypts for real)."""
    errs = []
    conf = yaml.safe_load(sops_file.read_text()) or {}
    rules = conf.get("creation_rules") or []
    if not rules:
        return [f"{sops_file.name}: no creation_rules"]
    for i, r in enumerate(rules):
        where = f"{sops_file.name} rule {i} ({r.get('path_regex')!r})"
        if not r.get("path_regex"):
            errs.append(f"{where}: no path_regex (a catch-all rule would encrypt anything anywhere)")
        if r.get("encrypted_regex") != "^(data|stringData)$":
            errs.append(f"{where}: encrypted_regex must be ^(data|stringData)$")
        for k in ("pgp", "kms", "gcp_kms", "azure_keyvault", "hc_vault_transit_uri"):
            if r.get(k):
                errs.append(f"{where}: {k} recipients: age only")
        ages = [a for g in (r.get("key_groups") or []) for a in (g.get("age") or [])] + \
            ([r["age"]] if isinstance(r.get("age"), str) else list(r.get("age") or []))
        if not ages:
            errs.append(f"{where}: no age recipient")
        for g in r.get("key_groups") or []:
            extra = set(g) - {"age"}
            if extra:
                errs.append(f"{where}: key group has non-age recipients {sorted(extra)}")
        if r.get("path_regex") and re.search(r.get("path_regex"), "apps/base/raibid/dispatcher.yaml"):
            errs.append(f"{where}: matches plain manifests, not only *.sops.yaml")
    def first_rule(path: str):
        for r in rules:
            if re.search(r.get("path_regex") or "", path):
                return r
        return None
    for row in secrets_table(root):
        f = row["file"]
        if not f.endswith(".sops.yaml"):
            errs.append(f"docs/secrets.md: {f} is not named *.sops.yaml")
        if first_rule(f) is None:
            errs.append(f"{sops_file.name}: no creation rule matches {f}")
    return errs


# ---------------------------------------------------------------------------------------------------------
# 10. every Secret a workload reads is one bootstrap writes (docs/secrets.md), with that key
# ---------------------------------------------------------------------------------------------------------


def secret_refs(objs: list[Obj]) -> Iterator[tuple[str, str, str | None, str]]:
    """(namespace, secret name, key or None for the whole Secret, who) for every Secret reference."""
    for owner, pod in pod_specs(objs):
        ns = owner["metadata"].get("namespace")
        for c in containers(pod):
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    yield ns, ref["name"], ref.get("key"), f"{describe(owner)} env {e['name']}"
            for ef in c.get("envFrom") or []:
                if ef.get("secretRef"):
                    yield ns, ef["secretRef"]["name"], None, f"{describe(owner)} envFrom"
        for v in pod.get("volumes") or []:
            if v.get("secret") and not v["secret"].get("optional"):
                items = v["secret"].get("items") or []
                for it in items or [None]:
                    yield ns, v["secret"]["secretName"], it and it.get("key"), f"{describe(owner)} volume {v['name']}"
    for ta in find(objs, "TriggerAuthentication"):
        for ref in (ta.get("spec") or {}).get("secretTargetRef") or []:
            yield ta["metadata"]["namespace"], ref["name"], ref.get("key"), describe(ta)
    for hr in find(objs, "HelmRelease", "gitea"):
        admin = (((hr["spec"].get("values") or {}).get("gitea") or {}).get("admin") or {})
        if admin.get("existingSecret"):
            for k in ("username", "password"):
                yield hr["metadata"]["namespace"], admin["existingSecret"], k, f"{describe(hr)} gitea.admin"


def check_secret_refs(objs: list[Obj]) -> list[str]:
    table = {(r["namespace"], r["secret"]): set(r["keys"].split(",")) for r in secrets_table()}
    errs = []
    for ns, name, key, who in secret_refs(objs):
        if (ns, name) not in table:
            errs.append(f"{who}: reads Secret {ns}/{name}, which docs/secrets.md does not define (bootstrap will not create it)")
        elif key and key not in table[(ns, name)]:
            errs.append(f"{who}: reads key {key} of Secret {ns}/{name}; docs/secrets.md lists {sorted(table[(ns, name)])}")
    return errs


REPO_CHECKS: list[tuple[str, Check]] = [
    ("scaledjob", check_scaledjob),
    ("contract-env", check_contract_env),
    ("helm-pinned", check_helm_pinned),
    ("images-pinned", check_images_pinned),
    ("containerfiles", lambda objs: check_containerfiles()),
    ("no-plaintext-secrets", check_no_plaintext_secrets),
    ("repo-secrets", lambda objs: check_repo_secrets()),
    ("secret-dirs", lambda objs: check_secret_dirs()),
    ("workloads", check_workloads),
    ("namespaces", check_namespaces),
    ("flux-chain", check_flux_chain),
    ("substitutions", check_substitutions),
    ("image-versions", check_image_versions),
    ("sops-rules", lambda objs: check_sops_rules()),
    ("secret-refs", check_secret_refs),
]
