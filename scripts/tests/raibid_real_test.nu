# scripts/raibid.nu against the real thing: a private redis-server, the real raibid-dispatcher and
# raibid-agent binaries (built from rust/ if needed) and a real git repository of the example crate.

use std/assert
use std/testing *
use helpers.nu *
use ../raibid.nu
use ../lib/contract.nu [load-contract]

const ROOT = path self ../..

def bg [log: path, argv: list<string>]: nothing -> int {
  with-env {RAIBID_BG_LOG: $log} {
    ^setsid sh -c 'exec "$@" >>"$RAIBID_BG_LOG" 2>&1 < /dev/null & echo $!' raibid-test ...$argv | str trim | into int
  }
}

def wait-port [port: int] {
  let deadline = (date now) + 20sec
  loop {
    let ok = (try { http get --full --allow-errors $"http://127.0.0.1:($port)/readyz" | get status } catch { 0 }) == 200
    if $ok { return }
    assert ((date now) < $deadline) $"nothing ready on port ($port)"
    sleep 100ms
  }
}

# Start redis + dispatcher + one agent, run `body` with RAIBID_URL/RAIBID_API_TOKEN set, stop everything.
def with-stack [body: closure]: nothing -> any {
  let build = (do { cd ($ROOT | path join rust); ^cargo build -q --locked --bins } | complete)
  assert equal $build.exit_code 0 $"cargo build failed: ($build.stderr)"
  let dir = (mktemp -d -t raibid-real-XXXXXX)
  let redis_port = (port)
  let http_port = (port)
  let token = (random chars --length 32)
  let redis = (bg ($dir | path join redis.log) [redis-server --bind 127.0.0.1 --port ($redis_port | into string) --save "" --appendonly yes --appendfsync always --dir $dir])
  sleep 300ms
  let redis_url = $"redis://127.0.0.1:($redis_port)"
  let bin = ($ROOT | path join rust target debug)
  let pids = with-env {RAIBID_REDIS_URL: $redis_url, RAIBID_API_TOKEN: $token, RAIBID_LISTEN: $"127.0.0.1:($http_port)",
      RAIBID_ALLOWED_SCHEMES: file, RAIBID_WORKSPACE_DIR: ($dir | path join ws), RAIBID_CACHE_DIR: ($dir | path join cache)} {
    [
      (bg ($dir | path join dispatcher.log) [($bin | path join raibid-dispatcher)])
      (bg ($dir | path join agent.log) [($bin | path join raibid-agent) --name real-test-agent --block-ms 300])
    ]
  }
  let r = try {
    wait-port $http_port
    {ok: (with-clean-env {RAIBID_URL: $"http://127.0.0.1:($http_port)", RAIBID_API_TOKEN: $token} { do $body $dir })}
  } catch {|e| {err: $e} }
  for p in ($pids | append $redis) { do { ^kill -TERM $p } | complete | ignore }
  sleep 500ms
  for p in ($pids | append $redis) { do { ^pkill -KILL -s $p } | complete | ignore; do { ^kill -KILL $p } | complete | ignore }
  rm -rf $dir
  if ($r.err? != null) { return $r.err.raw }
  $r.ok
}

def example-repo [dir: path, pipeline?: string]: nothing -> string {
  let repo = ($dir | path join repo)
  mkdir ($repo | path join src)
  let ex = ($ROOT | path join examples hello-raibid)
  for f in [Cargo.toml Cargo.lock .gitignore src/lib.rs] { cp ($ex | path join $f) ($repo | path join $f) }
  if $pipeline != null { $pipeline | save ($repo | path join .raibid.yaml) }
  do {
    cd $repo
    ^git init -q -b main
    ^git -c user.name=t -c user.email=t@t.invalid add -A
    ^git -c user.name=t -c user.email=t@t.invalid commit -qm demo
  }
  $"file://($repo)"
}

@test
def submit_follow_show_queue_agents_against_the_real_dispatcher [] {
  with-stack {|dir|
    let url = (example-repo $dir)
    let job = (raibid jobs submit $url)
    assert equal $job.status queued
    # --follow prints the live log as plain lines and ends when the job ends (finished: last).
    let followed = (do { ^$nu.current-exe --no-config-file -c $"use ($ROOT | path join scripts raibid.nu); raibid jobs logs ($job.id) --follow" } | complete)
    assert equal $followed.exit_code 0 $followed.stderr
    assert ($followed.stdout | lines | any {|l| $l =~ '^\[test\] test result: ok\. 2 passed' }) "cargo test output arrives through --follow"
    assert equal ($followed.stdout | lines | last) "finished: succeeded"
    let lines = (raibid jobs logs $job.id)
    assert ($lines | any {|l| $l.line =~ 'test result: ok\. 2 passed' }) "and is in the stored log"
    let shown = (raibid jobs show $job.id)
    assert equal $shown.status succeeded
    assert equal ($shown.steps | get name) [clone config build test]
    let listed = (raibid jobs --status succeeded)
    assert equal ($listed | get id) [$job.id]
    let q = (raibid queue)
    # Totals over every agent type, and each type's own stream under `kinds`.
    assert equal [$q.group $q.lag $q.pending] [raibid-agents 0 0]
    # contract::kinds::ALL, in its order (rust, image, gpu: issue 20 added the GPU kind's stream).
    let k = (load-contract).keys
    assert equal ($q.kinds | get stream) [$k.JOBS_STREAM $k.IMAGE_JOBS_STREAM $k.GPU_JOBS_STREAM]
    assert equal ($q.kinds | get lag) [0 0 0]
    assert equal (raibid agents | get id) [real-test-agent]
    # Retry makes a new job; cancel of a finished job is refused with the API's message.
    let again = (raibid jobs retry $job.id)
    assert equal $again.retry_of $job.id
    assert equal (error-code-of { raibid jobs cancel $job.id }) conflict
  }
}

@test
def cancel_a_running_job_through_the_cli [] {
  with-stack {|dir|
    let url = (example-repo $dir "steps:\n  - name: wait\n    run: sleep 60\n")
    let job = (raibid jobs submit $url)
    let deadline = (date now) + 30sec
    while (raibid jobs show $job.id | get step) != "wait" {
      assert ((date now) < $deadline) "the job never reached its step"
      sleep 100ms
    }
    raibid jobs cancel $job.id | ignore
    sleep 1sec
    let j = (raibid jobs show $job.id)
    assert equal $j.status cancelled
    assert ($j.failure_reason =~ 'wait')
  }
}

# A private docker-registry on a free port for `body`; killed after.
def with-registry [body: closure]: nothing -> any {
  let dir = (mktemp -d -t raibid-reg-XXXXXX)
  let p = (port)
  $"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ($dir)/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:($p)\n" | save ($dir | path join config.yml)
  let pid = (bg ($dir | path join registry.log) [docker-registry serve ($dir | path join config.yml)])
  let deadline = (date now) + 15sec
  while ((try { http get --full --allow-errors $"http://127.0.0.1:($p)/v2/" | get status } catch { 0 }) != 200) {
    assert ((date now) < $deadline) "docker-registry did not start"
    sleep 100ms
  }
  let r = try { {ok: (do $body $"127.0.0.1:($p)")} } catch {|e| {err: $e} }
  do { ^kill -KILL $pid } | complete | ignore
  rm -rf $dir
  if ($r.err? != null) { return $r.err.raw }
  $r.ok
}

# issue 23 §2: `artifacts` lists a job's uploaded files, `artifacts get` fetches one bit-identical (its
# digest checked) from the real registry through the real dispatcher.
@test
def artifacts_are_listed_and_fetched_through_the_cli [] {
  with-registry {|reg|
    with-env {RAIBID_REGISTRY: $reg, RAIBID_REGISTRY_INSECURE: "true"} {
      with-stack {|dir|
        let url = (example-repo $dir "steps:\n  - name: make\n    run: mkdir -p out && head -c 300000 /dev/urandom > out/blob.bin\nartifacts: [out/blob.bin]\n")
        let job = (raibid jobs submit $url)
        let deadline = (date now) + 120sec
        while (raibid jobs show $job.id | get status) not-in [succeeded failed cancelled timed_out] {
          assert ((date now) < $deadline) "the job did not finish"
          sleep 200ms
        }
        let shown = (raibid jobs show $job.id)
        assert equal $shown.status succeeded ($shown | to json)
        assert equal ($shown.steps | get name) [clone config make artifacts]
        let list = (raibid artifacts $job.id)
        assert equal ($list | get name) [out/blob.bin]
        assert equal $list.0.size 300000B
        let dest = ($dir | path join fetched.bin)
        let got = (raibid artifacts get $job.id --out $dest)
        assert equal $got.digest $list.0.digest
        assert equal $"sha256:(open --raw $dest | hash sha256)" $list.0.digest
        assert equal (open --raw $dest | bytes length) 300000
        # By digest too; an existing file is not overwritten without --force; unknown names are named.
        assert equal (error-code-of { raibid artifacts get $job.id $list.0.digest --out $dest }) file_exists
        assert equal (raibid artifacts get $job.id $list.0.digest --out $dest --force | get digest) $list.0.digest
        assert equal (error-code-of { raibid artifacts get $job.id nope }) unknown_artifact
      }
    }
  }
}

@test
def matrix_groups_listed_shown_cancelled_and_retried_through_the_cli [] {
  with-stack {|dir|
    let url = (example-repo $dir "matrix:\n  n: ['1', '2']\nsteps:\n  - name: wait\n    run: sleep 60\n")
    let job = (raibid jobs submit $url)
    let deadline = (date now) + 60sec
    while (raibid groups | where id == $job.id | is-empty) or ((raibid groups show $job.id).cells.0.status != running) {
      assert ((date now) < $deadline) "the push never fanned out, or its first cell never ran"
      sleep 100ms
    }
    let g = (raibid groups show $job.id)
    assert equal ($g.cells | get cell) ["n=1" "n=2"]
    assert equal $g.cells.0.status running
    let c = (raibid groups cancel $job.id)
    assert equal $c.cells 2
    let deadline = (date now) + 30sec
    while (raibid groups show $job.id | get status) != cancelled {
      assert ((date now) < $deadline) "the group was not cancelled"
      sleep 100ms
    }
    assert equal (raibid groups show $job.id | get cells | get status) [cancelled cancelled]
    assert equal (error-code-of { raibid groups cancel $job.id }) conflict
    let again = (raibid groups retry $job.id)
    assert equal $again.retry_of $job.id
    assert equal (error-code-of { raibid groups show 01JD0000000000000000000000 }) not_found
  }
}
