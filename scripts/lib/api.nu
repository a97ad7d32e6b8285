# Client of the dispatcher's REST API (/api/v1, bearer token). Base URL from RAIBID_URL, token from
# RAIBID_API_TOKEN (or RAIBID_API_TOKEN_FILE, or the owner's copy written by bootstrap). Nothing else:
# point these two at the local dev stack (`./scripts/dev.sh env`) or at the Spark (bootstrap's summary).

use errors.nu [fail]
use contract.nu [load-contract job-statuses]
use http.nu [request]
use secrets.nu [secret]

# The job statuses (one list: the contract's `Status`).
export def statuses []: nothing -> list<string> { job-statuses }

# Absolute URL of an API path (`/jobs` → http://…/api/v1/jobs).
export def api-url [path: string]: nothing -> string {
  $"($env.RAIBID_URL | str trim --right --char '/')((load-contract).http.API_PREFIX)($path)"
}

def auth []: nothing -> record {
  {Authorization: $"Bearer (secret RAIBID_API_TOKEN --purpose 'the dispatcher API')", Accept: "application/json"}
}

# Call the API; answers other than 2xx become errors carrying the API's own snake_case code.
export def call [method: string, path: string, --body: any = null]: nothing -> any {
  let res = (request $method (api-url $path) --headers (auth) --body $body --service "the dispatcher"
    --hint "is the dispatcher running? Set RAIBID_URL (`./scripts/dev.sh env` prints it for the local stack)")
  if $res.status in 200..299 { return $res.body }
  let e = ($res.body | if ($in | describe | str starts-with "record") { $in.error? | default {} } else { {} })
  let code = ($e.code? | default $"http_($res.status)")
  let msg = ($e.message? | default ($res.body | to text | str trim))
  let hint = match $res.status {
    401 => "check RAIBID_API_TOKEN (or RAIBID_API_TOKEN_FILE); `./scripts/dev.sh env` prints the local one"
    404 => "check the job id (`raibid jobs` lists them)"
    409 => "the job is in a state that does not allow this (see `jobs show`)"
    503 => "the dispatcher cannot reach Redis; see its /readyz and logs"
    _ => ""
  }
  let code = if ($code =~ '^[a-z][a-z0-9]*(_[a-z0-9]+)*$') { $code } else { "api_error" }
  fail $code $"dispatcher: ($msg) \(($method) ($path), HTTP ($res.status)\)" --hint $hint
}

def to-date []: any -> any { if $in == null { null } else { $in | into datetime } }

# A Job with its timestamps as datetimes and step durations as durations.
export def normalize-job []: record -> record {
  $in
  | update timestamps {|j| $j.timestamps | transpose k v | reduce --fold {} {|r, acc| $acc | insert $r.k ($r.v | to-date) } }
  | update steps {|j| $j.steps | each {|s| $s | update duration_ms {|x| if $x.duration_ms == null { null } else { $x.duration_ms * 1ms | round-duration } } | rename --column {duration_ms: duration} } }
}

# A duration rounded to what a person reads: milliseconds below 10 s, seconds below 10 min, minutes above.
@example "a 30 s build" { 30sec + 200ms + 966us | round-duration } --result 30sec
export def round-duration []: any -> any {
  let d = $in
  if $d == null { return null }
  let unit = if $d < 10sec { 1ms } else if $d < 10min { 1sec } else { 1min }
  (($d / $unit) | math round) * $unit
}

# The repository of a clone URL as people name it: `owner/name` (host, scheme and `.git` dropped).
@example "a Gitea URL" { "http://git.raibid.internal/octo/hello.git" | short-repo } --result "octo/hello"
export def short-repo []: string -> string {
  $in | str replace --regex '^[a-z+]+://[^/]*/' '' | str replace --regex '\.git/?$' '' | str trim --right --char '/'
  | split row '/' | last 2 | str join '/'
}

# One row per job for tables: the fields worth scanning, flattened, in at most 100 terminal columns
# (`jobs --full` has the whole record: sha, attempt, agent, trigger, …).
export def job-row []: record -> record {
  let j = ($in | normalize-job)
  let t = $j.timestamps
  {
    id: $j.id
    status: $j.status
    repo: ($j.source.repo_url | short-repo)
    ref: ($j.source.ref | str replace --regex '^refs/(heads|tags)/' '')
    step: $j.step
    received: $t.received
    duration: (if $t.started != null and $t.finished != null { $t.finished - $t.started | round-duration } else { null })
  }
}
