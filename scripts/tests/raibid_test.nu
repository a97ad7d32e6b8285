# Tests of scripts/raibid.nu against a fake of the dispatcher API (fakes/fake_dispatcher.py). The same
# commands run against the real dispatcher once `./scripts/dev.sh up` is available: raibid.nu reads only
# RAIBID_URL and RAIBID_API_TOKEN.

use std/assert
use std/testing *
use helpers.nu *
use ../raibid.nu

const TOKEN = "api-test-token-0123456789"

def job [id: string, status: string, repo: string, --started: string = "2026-11-21T10:00:01Z", --finished: any = "2026-11-21T10:02:01Z"] {
  {
    id: $id, status: $status, step: (if $status == running { "test" } else { null }), attempt: 1, agent: "agent-1"
    source: {repo_url: $"http://git.raibid.internal/($repo).git", ref: "refs/heads/main", sha: ("a" | fill -c a -w 40)
      trigger: {kind: gitea_push, actor: "octo"}, delivery_id: "d1", forge_repo: $repo}
    pipeline: "default"
    timestamps: {received: "2026-11-21T10:00:00Z", queued: "2026-11-21T10:00:00Z", claimed: "2026-11-21T10:00:01Z", started: $started, finished: $finished}
    steps: [{name: build, status: succeeded, exit_code: 0, duration_ms: 60000} {name: test, status: $status, exit_code: null, duration_ms: null}]
    failure_reason: (if $status == failed { "step test exited with 101" } else { null }), retry_of: null, cancel_requested: false
  }
}

def id [n: int] { $"01JD($n | fill -a r -c '0' -w 22)" }

def state [] {
  let jobs = (1..7 | each {|n| job (id $n) (if $n mod 3 == 0 { "failed" } else { "succeeded" }) (if $n mod 2 == 0 { "octo/hello" } else { "acme/svc-api" }) })
  let line = {|s, step, stream, text| {seq: $"1700000000000-($s)", step: $step, stream: $stream, ts: "2026-11-21T10:00:02Z", line: $text} }
  {
    token: $TOKEN
    jobs: ($jobs | append (job (id 8) running "octo/hello" --finished null))
    logs: {(id 8): [(do $line 0 build stdout "Compiling hello v0.1.0") (do $line 1 test stderr "test result: FAILED")]}
    live: {(id 8): [(do $line 2 test stdout "running 3 tests") (do $line 3 system system "job finished")]}
    queue: {length: 4, lag: 2, pending: 1, oldest_waiting_age_secs: 3.5, consumers: 2}
    agents: [{id: "agent-1", current_job: (id 8), last_heartbeat: "2026-11-21T10:00:05Z", jobs_done: 12}]
  }
}

def api-env [f: record] { {RAIBID_URL: $f.dispatcher.url, RAIBID_API_TOKEN: $TOKEN} }

@test
def jobs_lists_filters_and_follows_cursors [] {
  with-fakes {dispatcher: (state)} {|f|
    with-clean-env (api-env $f) {
      let all = (raibid jobs)
      assert equal ($all | length) 8
      assert equal ($all | columns) [id status repo ref step received duration]
      assert equal ($all.0.repo) "acme/svc-api"
      assert equal ($all.0.received | describe) datetime
      assert equal ($all | where status == succeeded | first | get duration) 2min
      assert equal (raibid jobs --status failed | get id) [(id 3) (id 6)]
      assert equal (raibid jobs --repo hello | length) 4
      # Pages of 3: the cursor is followed until the limit.
      assert equal (raibid jobs --limit 3 | length) 3
      let listed = (calls $f.dispatcher GET '^/api/v1/jobs$')
      assert equal ($listed | last | get query) {limit: "3"}
      assert equal (raibid jobs --full | first | get source.forge_repo) "acme/svc-api"
      assert equal (error-code-of { raibid jobs --status bogus }) bad_status
      assert-no-violations $f.dispatcher
    }
  }
}

@test
def jobs_pages_through_next_cursor [] {
  # The API caps a page at 500 jobs: 520 take two calls, the second with the first page's next_cursor.
  let many = (1..520 | each {|n| job (id $n) succeeded "octo/hello" })
  with-fakes {dispatcher: ((state) | update jobs $many)} {|f|
    with-clean-env (api-env $f) {
      let ids = (raibid jobs --limit 520 | get id)
      assert equal ($ids | length) 520
      assert equal ($ids | uniq | length) 520
      let q = (calls $f.dispatcher GET '^/api/v1/jobs$' | get query)
      assert equal $q [{limit: "500"} {limit: "20", cursor: (id 501)}]
      assert-no-violations $f.dispatcher
    }
  }
}

@test
def submit_show_cancel_retry [] {
  with-fakes {dispatcher: (state)} {|f|
    with-clean-env (api-env $f) {
      let j = (raibid jobs submit "http://git.raibid.internal/octo/hello.git" --ref dev)
      assert equal $j.status queued
      assert equal $j.source.ref "refs/heads/dev"
      assert equal ($j.timestamps.received | describe) datetime
      assert equal (calls $f.dispatcher POST '^/api/v1/jobs$' | get 0.body) {repo_url: "http://git.raibid.internal/octo/hello.git", ref: dev, sha: null}
      assert equal (raibid jobs show $j.id | get id) $j.id
      assert equal (raibid jobs cancel $j.id | get status) cancelled
      let r = (raibid jobs retry $j.id)
      assert equal $r.retry_of $j.id
      assert equal $r.source.trigger.kind retry
      assert equal (raibid jobs show (id 3) | get steps.0.duration) 1min
      assert-no-violations $f.dispatcher
    }
  }
}

@test
def api_errors_keep_the_dispatchers_code [] {
  with-fakes {dispatcher: (state)} {|f|
    with-clean-env (api-env $f) {
      assert equal (error-code-of { raibid jobs show "nope" }) not_found
      assert equal (error-code-of { raibid jobs retry (id 8) }) conflict
      assert equal (error-code-of { raibid jobs submit "x" --sha "abc" }) unprocessable
    }
    with-clean-env ((api-env $f) | update RAIBID_API_TOKEN "wrong") {
      assert equal (error-code-of { raibid queue }) unauthorized
    }
    with-clean-env ((api-env $f) | reject RAIBID_API_TOKEN) {
      assert equal (error-code-of { raibid queue }) secret_missing
    }
  }
}

@test
def logs_and_follow_stream_records [] {
  with-fakes {dispatcher: (state)} {|f|
    with-clean-env (api-env $f) {
      let lines = (raibid jobs logs (id 8))
      assert equal ($lines | get line) ["Compiling hello v0.1.0" "test result: FAILED"]
      assert equal ($lines | where stream == stderr | get step) [test]
      assert equal ($lines.0.ts | describe) datetime
      assert-no-violations $f.dispatcher
    }
  }
}

@test
def queue_and_agents [] {
  with-fakes {dispatcher: (state)} {|f|
    with-clean-env (api-env $f) {
      let q = (raibid queue)
      assert equal ($q | select stream group lag) {stream: "raibid:jobs", group: "raibid-agents", lag: 2}
      let a = (raibid agents)
      assert equal ($a | get id) [agent-1]
      assert equal ($a.0.heartbeat_age | describe) duration
      assert-no-violations $f.dispatcher
    }
  }
}

@test
def token_from_file_and_cli_output_is_a_table [] {
  with-fakes {dispatcher: (state)} {|f|
    let tok = (mktemp -t api-token-XXXXXX)
    $TOKEN | save -f $tok
    with-clean-env {RAIBID_URL: $f.dispatcher.url, RAIBID_API_TOKEN_FILE: $tok} {
      let out = (do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts raibid.nu) jobs --status failed } | complete)
      assert equal $out.exit_code 0 $out.stderr
      assert ($out.stdout | str contains (id 3))
      assert not ($out.stdout + $out.stderr | str contains $TOKEN)
    }
    rm -f $tok
  }
}

# Run raibid.nu in a nu of its own (as a user does) with `code`, in the checkout.
def nu-run [f: record, code: string]: nothing -> record {
  with-clean-env (api-env $f) {
    do { cd $REPO_ROOT; ^$nu.current-exe --no-config-file -c $code } | complete
  }
}

# Used as a module, as documented (`use scripts/raibid.nu; raibid jobs`), the commands return tables
# a pipeline sorts and filters.
@test
def usable_as_a_module_with_tables_back [] {
  with-fakes {dispatcher: (state)} {|f|
    let r = (nu-run $f "use scripts/raibid.nu; raibid jobs --status failed | sort-by received | get id | to nuon")
    assert equal $r.exit_code 0 $r.stderr
    assert equal ($r.stdout | from nuon) [(id 3) (id 6)]
    let r = (nu-run $f "use scripts/raibid.nu; raibid jobs logs (raibid jobs --status running | first | get id) | where stream == stderr | get line | to nuon")
    assert equal $r.exit_code 0 $r.stderr
    assert equal ($r.stdout | from nuon) ["test result: FAILED"]
    # And as a script, from any shell.
    let sh = (with-clean-env (api-env $f) { do { cd $REPO_ROOT; ^./scripts/raibid jobs --status failed } | complete })
    assert equal $sh.exit_code 0 $sh.stderr
    assert str contains $sh.stdout (id 6)
  }
}

# Durations read as a person reads them, and the default columns fit 100 terminal columns.
@test
def durations_rounded_and_rows_fit_100_columns [] {
  let jobs = ((state).jobs | append [
    (job (id 9) succeeded "octo/hello" --started "2026-11-21T10:00:01Z" --finished "2026-11-21T10:00:31.200966844Z")
    (job (id 10) succeeded "octo/hello" --started "2026-11-21T10:00:01Z" --finished "2026-11-21T10:00:02.234567Z")
    (job (id 11) failed "octo/hello" --started "2026-11-21T10:00:01Z" --finished "2026-11-21T10:14:40Z")
  ])
  with-fakes {dispatcher: ((state) | update jobs $jobs)} {|f|
    with-clean-env (api-env $f) {
      let rows = (raibid jobs)
      assert equal ($rows | where id == (id 9) | get 0.duration) 30sec
      assert equal ($rows | where id == (id 10) | get 0.duration) (1sec + 235ms)
      assert equal ($rows | where id == (id 11) | get 0.duration) 15min
      let text = ($rows | first 4 | table --width 100 | ansi strip | lines)
      assert ($text | all {|l| ($l | str length --grapheme-clusters) <= 100 }) ($text | str join "\n")
      assert equal ($text | length) 8 $"one line per job: ($text | str join "\n")"
      for c in [id status repo ref step received duration] { assert str contains $text.1 $c }
    }
  }
}

# `--follow` prints plain lines as `tail -f` does, `finished:` after the last one.
@test
def follow_prints_plain_lines_then_finished [] {
  with-fakes {dispatcher: (state)} {|f|
    let r = (nu-run $f $"use scripts/raibid.nu; raibid jobs logs (id 8) --follow")
    assert equal $r.exit_code 0 $r.stderr
    assert equal ($r.stdout | lines) [
      "[build] Compiling hello v0.1.0" "[test] test result: FAILED" "[test] running 3 tests" "[system] job finished"
      "finished: succeeded"
    ]
  }
}

# One list of statuses, the contract's: every status the API accepts is accepted (and documented in
# the flag's help), an unknown one is refused naming them.
@test
def statuses_come_from_the_contract [] {
  use ../lib/contract.nu [job-statuses]
  let all = (job-statuses)
  assert equal $all [queued running building testing publishing succeeded failed cancelled timed_out]
  with-fakes {dispatcher: (state)} {|f|
    with-clean-env (api-env $f) {
      assert equal (raibid jobs --status building) []
      for s in $all { raibid jobs --status $s | ignore }
      assert equal (error-code-of { raibid jobs --status bogus }) bad_status
      assert-no-violations $f.dispatcher
    }
  }
  let help = (help raibid jobs)
  for s in $all { assert str contains $help $s }
}

# Image jobs from the CLI: `jobs submit URL --image name[:tag]` (as over REST and MCP).
@test
def image_jobs_submitted_from_the_cli [] {
  with-fakes {dispatcher: (state)} {|f|
    with-clean-env (api-env $f) {
      let j = (raibid jobs submit "http://git.raibid.internal/team/app.git" --image team/app:v1)
      assert equal $j.kind image
      assert equal (calls $f.dispatcher POST '^/api/v1/jobs$' | last | get body.image) {name: "team/app", tags: [v1]}
      raibid jobs submit "http://git.raibid.internal/team/app.git" --image team/app --no-publish | ignore
      assert equal (calls $f.dispatcher POST '^/api/v1/jobs$' | last | get body.image) {name: "team/app", publish: false}
      assert equal (error-code-of { raibid jobs submit "http://git.raibid.internal/team/app.git" --image "Bad Name" }) unprocessable
      assert equal (error-code-of { raibid jobs submit "http://git.raibid.internal/team/app.git" --no-publish }) bad_argument
      assert-no-violations $f.dispatcher
    }
  }
}

# Ctrl-C while following ends it quietly, as it ends `tail -f`: the lines so far, no Nushell trace.
@test
def ctrl_c_stops_follow_quietly [] {
  with-fakes {dispatcher: ((state) | insert hold [(id 8)])} {|f|
    let out = (mktemp -t raibid-follow-XXXXXX)
    let pid = (with-clean-env (api-env $f) {
      with-env {OUT: $out} {
        cd $REPO_ROOT
        ^sh -c 'setsid ./scripts/raibid jobs logs "$1" --follow >"$OUT" 2>&1 & echo $!' follow (id 8) | str trim | into int
      }
    })
    let deadline = (date now) + 20sec
    while not (open --raw $out | str contains "[system] job finished") {
      assert ((date now) < $deadline) $"no lines followed: (open --raw $out)"
      sleep 20ms
    }
    ^kill -INT -- $"-($pid)"
    while ((do { ^kill -0 $pid } | complete).exit_code == 0) {
      assert ((date now) < $deadline) "follow did not stop on Ctrl-C"
      sleep 20ms
    }
    let text = (open --raw $out)
    assert equal ($text | lines | last) "[system] job finished" $text
    assert not ($text =~ '(Error:|╭|nu::shell)') $"a trace: ($text)"
    rm -f $out
  }
}

# Issue 19 §3: what happened is in what the CLI returns: the public page, the hand-over both ways, an
# image job's pushed references and digests, and how much of a capped log was kept.
@test
def show_has_page_handover_pushed_and_the_log_cap [] {
  let page = {|n| $"http://127.0.0.1:8080/public/jobs/(id $n)/0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f" }
  let rust = (job (id 1) succeeded "octo/app" | insert handed_over_to (id 2) | insert page_url (do $page 1)
    | insert log_truncated {kept_lines: 1950, kept_bytes: 243712, dropped_lines: 98210, dropped_bytes: 7012044})
  let digest = $"sha256:('ab' | fill -c 'ab' -w 64)"
  let img = (job (id 2) succeeded "octo/app" | insert kind image | insert handed_over_from (id 1) | insert page_url (do $page 2)
    | insert image {request: {name: "octo/app", publish: true}, phases: {}, pushed: [{reference: "git.raibid.internal/octo/app:edge", digest: $digest}]})
  with-fakes {dispatcher: ((state) | update jobs [$rust $img])} {|f|
    with-clean-env (api-env $f) {
      let r = (raibid jobs show (id 1))
      assert equal $r.handed_over_to (id 2)
      assert equal $r.page_url (do $page 1)
      assert equal $r.log_truncated.kept_lines 1950
      let i = (raibid jobs show (id 2))
      assert equal $i.handed_over_from (id 1)
      assert equal $i.pushed [{reference: "git.raibid.internal/octo/app:edge", digest: $digest}]
      # The log's note says how much was kept, not only that it was cut.
      let out = (nu-run $f $"use scripts/raibid.nu; raibid jobs logs (id 1) | length")
      assert str contains $out.stderr "kept 1950 lines"
      assert str contains $out.stderr "dropped 98210 lines"
      assert-no-violations $f.dispatcher
    }
  }
}

@test
def mirror_status_shows_the_mapping_the_dispatcher_uses [] {
  let mirrors = {
    mirrors: [
      {github: "Octo/Hello", gitea: "mirrors/hello", source: "gitea", original_url: "https://github.com/Octo/Hello.git"}
      {github: "acme/tool", gitea: "ci/tool", source: "override", original_url: null}
    ]
    read_at: "2026-11-21T10:00:00Z", ttl_secs: 60, error: null, github_hosts: ["github.com"], github_statuses: true
  }
  with-fakes {dispatcher: ((state) | insert mirrors $mirrors)} {|f|
    with-clean-env (api-env $f) {
      let rows = (raibid mirror status)
      assert equal ($rows | select github gitea source) [
        {github: "Octo/Hello", gitea: "mirrors/hello", source: "gitea"}
        {github: "acme/tool", gitea: "ci/tool", source: "override"}
      ]
      assert equal ($rows.0.github_statuses) true
      assert equal ($rows.0.read_at | describe) datetime
      assert equal ((raibid mirror status --refresh) | length) 2
      assert-no-violations $f.dispatcher
    }
  }
}
