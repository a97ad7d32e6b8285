# `raibid schedule …` (issue 22 §3) against the real thing: a private redis-server, the real
# raibid-dispatcher (its scheduler ticking every 200 ms) and raibid-agent binaries, and a real git
# repository whose pipeline prints the variable a schedule's variant sets, run in the agent's sandbox.

use std/assert
use std/testing *
use helpers.nu *
use ../raibid.nu

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

# Redis + dispatcher + one agent; `body` runs with RAIBID_URL/RAIBID_API_TOKEN set; everything stops after.
def with-stack [body: closure]: nothing -> any {
  let build = (do { cd ($ROOT | path join rust); ^cargo build -q --locked --bins } | complete)
  assert equal $build.exit_code 0 $"cargo build failed: ($build.stderr)"
  let dir = (mktemp -d -t raibid-sched-XXXXXX)
  let redis_port = (port)
  let http_port = (port)
  let token = (random chars --length 32)
  let redis = (bg ($dir | path join redis.log) [redis-server --bind 127.0.0.1 --port ($redis_port | into string) --save "" --dir $dir])
  sleep 300ms
  let bin = ($ROOT | path join rust target debug)
  let pids = with-env {RAIBID_REDIS_URL: $"redis://127.0.0.1:($redis_port)", RAIBID_API_TOKEN: $token,
      RAIBID_LISTEN: $"127.0.0.1:($http_port)", RAIBID_ALLOWED_SCHEMES: file, RAIBID_SCHEDULE_TICK_MS: "200",
      RAIBID_WORKSPACE_DIR: ($dir | path join ws), RAIBID_CACHE_DIR: ($dir | path join cache)} {
    [
      (bg ($dir | path join dispatcher.log) [($bin | path join raibid-dispatcher)])
      (bg ($dir | path join agent.log) [($bin | path join raibid-agent) --name sched-test-agent --block-ms 300])
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

# A repository whose one step prints CARGO_UPDATE (unset unless the job's variant sets it).
def variant-repo [dir: path]: nothing -> string {
  let repo = ($dir | path join repo)
  mkdir $repo
  "steps:\n  - name: variant\n    run: echo \"variant CARGO_UPDATE=${CARGO_UPDATE:-unset}\"\n" | save ($repo | path join .raibid.yaml)
  do {
    cd $repo
    ^git init -q -b main
    ^git -c user.name=t -c user.email=t@t.invalid add -A
    ^git -c user.name=t -c user.email=t@t.invalid commit -qm demo
  }
  $"file://($repo)"
}

def wait-job [pred: closure, what: string]: nothing -> any {
  let deadline = (date now) + 60sec
  loop {
    let found = (raibid jobs --full | where {|j| do $pred $j })
    if ($found | is-not-empty) { return ($found | first) }
    assert ((date now) < $deadline) $"timed out waiting for ($what)"
    sleep 200ms
  }
}

@test
def schedule_add_list_fires_with_its_variant_pause_run_rm [] {
  with-stack {|dir|
    let url = (variant-repo $dir)
    # Every 2 seconds (croner's optional seconds field), with the variant CARGO_UPDATE=1.
    let s = (raibid schedule add $url "*/2 * * * * *" --timezone Europe/Berlin --vars CARGO_UPDATE=1)
    assert equal ($s | columns) [id repo ref cron timezone env paused next_run last_status last_job]
    assert ($s.id | str starts-with "sch_")
    assert equal [$s.ref $s.timezone $s.env $s.paused] [main Europe/Berlin {CARGO_UPDATE: "1"} false]
    assert equal ($s.next_run | describe) datetime
    let listed = (raibid schedule list)
    assert equal ($listed | get id) [$s.id]
    assert equal ($listed | describe | str starts-with "table") true
    # A due time fires a job that carries the trigger and the schedule; its step sees the variant.
    let job = (wait-job {|j| $j.schedule_id? == $s.id and $j.status == succeeded } "a scheduled job to succeed")
    assert equal $job.source.trigger.kind schedule
    let lines = (raibid jobs logs $job.id | where step == variant | get line)
    assert ($lines | any {|l| $l == "variant CARGO_UPDATE=1" }) $"the step did not see the variant: ($lines)"
    # The list shows the last result.
    let row = (raibid schedule list | first)
    assert ($row.last_job != null)
    # Paused: the flag shows and no next run; run now still makes a job.
    let p = (raibid schedule pause $s.id)
    assert equal [$p.paused $p.next_run] [true null]
    let now = (raibid schedule run $s.id)
    assert equal [$now.source.trigger.kind $now.schedule_id $now.env.CARGO_UPDATE] [schedule $s.id "1"]
    let r = (raibid schedule resume $s.id)
    assert equal $r.paused false
    assert equal (raibid schedule rm $s.id) {id: $s.id, deleted: true}
    assert equal (raibid schedule list) []
    # Bad input: the dispatcher's message names the problem; a removed schedule is not found.
    let e = (try { raibid schedule add $url "61 * * * *"; "" } catch {|e| $e.msg })
    assert ($e =~ 'cron: `61 \* \* \* \*`') $e
    let e = (try { raibid schedule add $url "@daily" --timezone Mars/Base; "" } catch {|e| $e.msg })
    assert ($e =~ 'timezone: `Mars/Base`') $e
    assert equal (error-code-of { raibid schedule add $url "@daily" --vars NOPE }) bad_vars
    assert equal (error-code-of { raibid schedule rm $s.id }) not_found
  }
}
