#!/bin/sh
# The GPU path on real hardware (issue 20 §3), in one command on a machine with an NVIDIA GPU and its driver (a DGX
# Spark, or any Linux box with nvidia-smi): builds the dispatcher and the agent, starts its own redis-server on a
# free loopback port, the dispatcher and ONE agent serving only kind `gpu` (RAIBID_AGENT_KINDS=gpu: it probes the GPU
# at start and exits 1 without one), submits examples/gpu-hello as a GPU job through the REST API
# (`gpu_required: true`, docs/api.md), waits for it, prints the job's `gpu` fields (name, uuid, driver_version,
# cuda_version) and its result. Everything it starts is stopped and removed on exit (trap), also on failure or ^C.
# Budget: 5 minutes after the build (GPU_CHECK_TIMEOUT seconds, default 300).
#
#   ./scripts/gpu-check.sh            # exit 0: the job succeeded on the GPU and its record names the GPU
#                                     # exit 1: it ran and failed (or timed out); exit 2: this machine cannot run it
# Needs: nvidia-smi (the driver), cargo, redis-server + redis-cli, git, curl, python3 (JSON only), bwrap (the
# agent runs every step in bubblewrap, ADR 0011). Nothing is read from or written to the local dev stack.
set -eu

say() { printf 'gpu-check: %s\n' "$*" >&2; }
refuse() { say "$*"; exit 2; }

# --- can this machine run it? -------------------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || refuse "nvidia-smi not found: this check needs a machine with an NVIDIA GPU \
and its driver (on DGX OS 7 the driver ships it). Without a GPU, a GPU job waits for a GPU agent: ./scripts/dev.sh up \
shows it queued."
gpus=$(nvidia-smi -L 2>&1) || refuse "nvidia-smi -L failed: the NVIDIA driver does not answer ($(printf '%s' "$gpus" | head -n 1))"
[ -n "$gpus" ] || refuse "nvidia-smi -L lists no GPU"
for tool in cargo redis-server redis-cli git curl python3 bwrap; do
  command -v "$tool" >/dev/null 2>&1 || refuse "$tool not found: it builds or runs the local stack (Ubuntu: sudo apt-get \
install -y redis-server git curl python3 bubblewrap; cargo: rustup, or nix develop in this repository)"
done

root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
budget=${GPU_CHECK_TIMEOUT:-300}
work=$(mktemp -d -t raibid-gpu-check-XXXXXX)
pids=""
cleanup() {
  status=$?
  # Agent first (it releases its name and job), then the dispatcher, Redis last: the reverse of the start order.
  rev=""; for p in $pids; do rev="$p $rev"; done
  for p in $rev; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "$status" -ne 0 ] && [ -d "$work/logs" ]; then
    for f in "$work"/logs/*.log; do [ -f "$f" ] && { say "--- last lines of $(basename "$f")"; tail -n 20 "$f" >&2; }; done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/logs" "$work/redis" "$work/workspaces" "$work/cache"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# A JSON field of stdin (a path of keys), printed as text; argv carries the path, nothing is put into code.
json() { python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$@"; }

say "GPU(s): $(printf '%s' "$gpus" | head -n 1)"
say "building raibid-dispatcher and raibid-agent (cargo build --release)"
(cd "$root/rust" && cargo build --release --locked -p raibid-agent -p raibid-dispatcher) >&2
bin="$root/rust/target/release"
start=$(date +%s)

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$work/redis" \
  >"$work/logs/redis.log" 2>&1 &
pids="$pids $!"
i=0; until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -lt 100 ] || { say "redis-server did not answer on port $redis_port"; exit 1; }; sleep 0.1
done

port=$(free_port)
url="http://127.0.0.1:$port"
token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
export RAIBID_REDIS_URL="redis://127.0.0.1:$redis_port" RAIBID_ALLOWED_SCHEMES="file"
RAIBID_API_TOKEN="$token" RAIBID_URL="$url" RAIBID_LISTEN="127.0.0.1:$port" \
  RAIBID_GITEA_WEBHOOK_SECRET=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n') \
  RAIBID_GITHUB_WEBHOOK_SECRET=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n') \
  "$bin/raibid-dispatcher" >"$work/logs/dispatcher.log" 2>&1 &
pids="$pids $!"
i=0; until curl -fsS "$url/readyz" >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -lt 300 ] || { say "the dispatcher did not become ready at $url"; exit 1; }; sleep 0.1
done

RAIBID_AGENT_KINDS=gpu RAIBID_WORKSPACE_DIR="$work/workspaces" RAIBID_CACHE_DIR="$work/cache" \
  "$bin/raibid-agent" --name gpu-check-agent >"$work/logs/agent.log" 2>&1 &
agent=$!
pids="$pids $agent"
sleep 2
kill -0 "$agent" 2>/dev/null || { say "the GPU agent exited at start (its GPU probe or sandbox check refused):"; cat "$work/logs/agent.log" >&2; exit 1; }

# The example as a git repository of its own (the agent clones file:// in this mode, as the local stack does).
repo="$work/gpu-hello"
mkdir -p "$repo"
(cd "$root/examples/gpu-hello" && git ls-files -co --exclude-standard | while IFS= read -r f; do
  mkdir -p "$repo/$(dirname "$f")"; cp "$f" "$repo/$f"; done)
git -C "$repo" init -q -b main
git -C "$repo" -c user.name=raibid -c user.email=gpu-check@raibid.invalid add -A
git -C "$repo" -c user.name=raibid -c user.email=gpu-check@raibid.invalid commit -qm "gpu-check"

auth="Authorization: Bearer $token"
body=$(python3 -c 'import json, sys; print(json.dumps({"repo_url": "file://" + sys.argv[1], "ref": "main", "gpu_required": True}))' "$repo")
answer=$(curl -sS -X POST -H "$auth" -H 'Content-Type: application/json' --data "$body" -w '\n%{http_code}' "$url/api/v1/jobs")
code=$(printf '%s' "$answer" | tail -n 1)
job=$(printf '%s' "$answer" | sed '$d')
[ "$code" = 201 ] || { say "the dispatcher refused the GPU job (HTTP $code): $job"; exit 1; }
id=$(printf '%s' "$job" | json id)
say "submitted GPU job $id; waiting (up to ${budget}s)"

status=""
while :; do
  rec=$(curl -fsS -H "$auth" "$url/api/v1/jobs/$id")
  status=$(printf '%s' "$rec" | json status)
  case "$status" in succeeded|failed|cancelled|timed_out) break ;; esac
  [ $(( $(date +%s) - start )) -lt "$budget" ] || { say "job $id still $status after ${budget}s"; break; }
  sleep 2
done

printf '%s' "$rec" | python3 -c 'import json, sys
r = json.load(sys.stdin)
g = r.get("gpu") or {}
print("job        " + str(r.get("id")) + "  kind " + str(r.get("kind")) + "  status " + str(r.get("status")))
for k in ("name", "uuid", "driver_version", "cuda_version"):
    print("gpu.%-14s %s" % (k, g.get(k, "(missing)")))
for s in r.get("steps") or []:
    print("step %-10s %s %sms" % (s.get("name"), s.get("status"), s.get("duration_ms")))
if r.get("failure_reason"):
    print("failure    " + str(r["failure_reason"]))'
curl -fsS -H "$auth" "$url/api/v1/jobs/$id/logs?step=test&limit=200" \
  | python3 -c 'import json, sys
for l in json.load(sys.stdin).get("lines", []):
    if "gpu:" in l["line"] or "test result" in l["line"] or "panicked" in l["line"] or "no CUDA" in l["line"]:
        print("  [test] " + l["line"])' || true

[ "$status" = succeeded ] || { say "the GPU job did not succeed ($status)"; exit 1; }
[ -n "$(printf '%s' "$rec" | json gpu uuid)" ] || { say "the job succeeded but its record has no gpu.uuid"; exit 1; }
say "ok: the GPU job ran on $(printf '%s' "$rec" | json gpu name) in $(( $(date +%s) - start ))s"
