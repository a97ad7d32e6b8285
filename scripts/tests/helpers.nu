# Test helpers: fake HTTP servers on free loopback ports, and isolated environments.
#
# The fakes (fakes/*.py, Python 3.11 standard library) bind 127.0.0.1 port 0, write their port to a file and
# record every call and every violation of the documented API; `with-fakes` starts them, runs the test body
# and always stops them, even when the body fails.

use std/assert
use ../lib/env.nu [env-spec]

const HERE = path self .
export const REPO_ROOT = path self ../..
export const SWAGGER = path self ../../../shared/reference/forgejo-11-gitea-1.22-api.swagger.json

# Where the Gitea API document lives (RAIBID_SWAGGER overrides; the default is the shared reference copy).
export def swagger-path []: nothing -> path {
  $env.RAIBID_SWAGGER? | default $SWAGGER
}

# Start one fake: gitea, github or dispatcher. Returns {kind, url, port, pid, job, dir}.
export def start-fake [kind: string, state: record]: nothing -> record {
  let dir = (mktemp -d -t raibid-fake-XXXXXX)
  let state_file = ($dir | path join state.json)
  let port_file = ($dir | path join port.json)
  $state | to json | save $state_file
  let script = ($HERE | path join fakes $"fake_($kind).py")
  let swagger = (swagger-path)
  if $kind == "gitea" and not ($swagger | path exists) {
    error make --unspanned {msg: $"the Gitea API document is missing: ($swagger)"}
  }
  let job = (job spawn {
    ^python3 $script --state $state_file --port-file $port_file --swagger $swagger o+e> ($dir | path join log.txt)
  })
  let deadline = (date now) + 10sec
  while not ($port_file | path exists) {
    if (date now) > $deadline {
      job kill $job
      error make --unspanned {msg: $"fake ($kind) did not start in 10s: (open --raw ($dir | path join log.txt))"}
    }
    sleep 20ms
  }
  let info = (open $port_file)
  {kind: $kind, url: $"http://127.0.0.1:($info.port)", port: $info.port, pid: $info.pid, job: $job, dir: $dir}
}

# Stop a fake started by start-fake (by its job id) and remove its directory.
export def stop-fake [srv: record]: nothing -> nothing {
  try { job kill $srv.job }
  rm -rf $srv.dir
}

# Run `body` with fakes running: `with-fakes {gitea: {...state}} {|f| ... $f.gitea.url ...}`.
export def with-fakes [fakes: record, body: closure]: nothing -> any {
  mut started = {}
  for k in ($fakes | columns) {
    $started = ($started | insert $k (start-fake $k ($fakes | get $k)))
  }
  let srv = $started
  let r = try { {ok: (do $body $srv)} } catch {|e| {err: $e} }
  for s in ($srv | values) { stop-fake $s }
  if ($r.err? != null) { return $r.err.raw }
  $r.ok
}

# Everything a fake has recorded: calls, violations or state.
export def fake-get [srv: record, what: string]: nothing -> any {
  http get $"($srv.url)/__fake/($what)"
}

# Assert that a fake saw no violation of the documented API.
export def assert-no-violations [srv: record]: nothing -> nothing {
  let v = (fake-get $srv violations)
  assert equal $v [] $"($srv.kind) saw calls that break its documented API:\n($v | str join "\n")"
}

# Calls to a fake, optionally only those matching a method and a path regex.
export def calls [srv: record, method?: string, path_re?: string]: nothing -> table {
  fake-get $srv calls
  | where {|c| $method == null or $c.method == $method }
  | where {|c| $path_re == null or $c.path =~ $path_re }
}

# Run `body` with every raibid/GitHub env var cleared and a fresh RAIBID_CONFIG_DIR, plus `vars`.
export def with-clean-env [vars: record, body: closure]: nothing -> any {
  let dir = (mktemp -d -t raibid-env-XXXXXX)
  let cleared = ($env | columns | where {|n| $n =~ '^(RAIBID_|GITHUB_TOKEN)' and $n != "RAIBID_ROOT" }
    | reduce --fold {} {|n, acc| $acc | insert $n null })
  let defaults = (env-spec | where default != null | reduce --fold {} {|v, acc| $acc | insert $v.name $v.default })
  let r = try {
    {ok: (with-env ($cleared | merge $defaults | merge {RAIBID_CONFIG_DIR: ($dir | path join config)} | merge $vars) $body)}
  } catch {|e| {err: $e} }
  rm -rf $dir
  if ($r.err? != null) { return $r.err.raw }
  $r.ok
}

# The error code (snake_case, from lib/errors.nu) a closure fails with; fails the test if it succeeds.
export def error-code-of [body: closure]: nothing -> string {
  use ../lib/errors.nu [error-code]
  let r = try { do $body | ignore; {code: null} } catch {|e| {code: ($e | error-code), msg: $e.msg} }
  assert ($r.code != null) "expected the command to fail with a raibid error"
  $r.code
}
