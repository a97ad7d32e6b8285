# Issue 17 end to end in the local stack as `dev.sh up` starts it (real redis-server, docker-registry,
# raibid-dispatcher and raibid-agent built from rust/, a state dir of the test's own): a hostile step
# looks for the stack's credentials where local mode keeps them — the state dir's env.json and
# settings.json (API token, Redis URL), Redis on the host's loopback, the agent's and the dispatcher's
# /proc entries — and reaches none of them. `down` leaves nothing running.

use std/assert
use std/testing *
use helpers.nu *

def --wrapped dev [...args: string]: nothing -> record {
  do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts dev.nu) ...$args } | complete
}

@test
def a_hostile_step_in_the_local_stack_reaches_no_credential [] {
  let build = (do { cd ($REPO_ROOT | path join rust); ^cargo build -q --locked --bins } | complete)
  assert equal $build.exit_code 0 $"cargo build failed: ($build.stderr)"
  let state = (mktemp -d -t raibid-hostile-XXXXXX)
  with-env {RAIBID_STATE_DIR: $state} {
    let up = (dev up --bin-dir ($REPO_ROOT | path join rust target debug) --agents 1 --no-demo)
    try {
      assert equal $up.exit_code 0 $"up failed: ($up.stderr)"
      let s = (open ($state | path join env.json))
      let redis_port = ($s.redis_url | split row ":" | last)
      let repo = (mktemp -d -t raibid-hostile-repo-XXXXXX)
      # The step gets the paths and the port in its pipeline; the token it searches for is in base64 so
      # that its own command line does not hold it.
      let tok64 = ($s.token | encode base64)
      let step = [
        $"cat ($state)/env.json ($state)/settings.json 2>&1 | grep -c token | sed 's/^/token-files-readable: /'"
        $"bash -c 'exec 3<>/dev/tcp/127.0.0.1/($redis_port); printf \"PING\\r\\n\" >&3; read -t 5 reply <&3; echo \"redis said: $reply\"'"
        $"echo ($tok64) | base64 -d > /tmp/pat; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\\0' '\\n' < $f 2>/dev/null | grep -qF -f /tmp/pat && echo \"LEAK in $f\"; done; echo searched"
      ]
      let yaml = ({steps: [{name: attack, run: ($step | str join "\n")}]} | to yaml)
      $yaml | save -f ($repo | path join .raibid.yaml)
      do { cd $repo; ^git init -q -b main; ^git add -A; ^git -c user.name=t -c user.email=t@t.invalid commit -qm hostile } | complete | ignore
      let headers = {Authorization: $"Bearer ($s.token)"}
      let job = (http post --content-type application/json --headers $headers $"($s.url)/api/v1/jobs" {repo_url: $"file://($repo)", ref: main})
      let deadline = (date now) + 60sec
      mut j = $job
      while $j.status not-in [succeeded failed cancelled timed_out] {
        assert ((date now) < $deadline) $"the job did not finish: ($j)"
        sleep 100ms
        $j = (http get --headers $headers $"($s.url)/api/v1/jobs/($job.id)")
      }
      let logs = (http get --headers $headers $"($s.url)/api/v1/jobs/($job.id)/logs")
      let lines = ($logs | get -o lines | default $logs | get line)
      assert equal $j.status succeeded ($lines | str join "\n")
      assert ("searched" in $lines) ($lines | str join "\n")
      assert ("token-files-readable: 0" in $lines) $"the step read the state dir: ($lines | str join "\n")"
      let redis = ($lines | where $it starts-with "redis said:")
      assert equal ($redis | length) 1 ($lines | str join "\n")
      assert str contains ($redis | first) "NOAUTH" "Redis answered a step without a password"
      assert equal ($lines | where $it starts-with "LEAK") [] "the step found the API token"
      rm -rf $repo
    } catch {|e|
      dev down | ignore
      rm -rf $state
      error make {msg: $e.msg}
    }
    let down = (dev down)
    assert equal $down.exit_code 0 $down.stderr
  }
  rm -rf $state
}
