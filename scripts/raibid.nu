#!/usr/bin/env nu
# raibid: a terminal CLI over the dispatcher's API. Used as a module (as nupm modules are), every command
# returns Nushell tables or records, so results pipe into `where`, `sort-by`, `get`:
#
#   use scripts/raibid.nu
#   raibid jobs --status failed | sort-by received | last 5
#
# From any other shell, `./scripts/raibid jobs --status failed` prints the same table (the pinned Nushell
# runs this file as a script; `./scripts/dev.sh nu` opens that Nushell for the module use above).
#
# `cache` works on a node's cache directory directly (RAIBID_CACHE_DIR or --dir; on the Spark the
# hostPath of the raibid-cache PersistentVolume), not through the API.
#
# The dispatcher is found through RAIBID_URL and authenticated with RAIBID_API_TOKEN (or
# RAIBID_API_TOKEN_FILE): `./scripts/dev.sh env` prints both for the local stack, bootstrap's summary for
# the Spark. Nothing else is read.

use lib/env.nu
use lib/errors.nu [fail interrupted]
use lib/api.nu *
use lib/contract.nu [job-statuses]
use lib/secrets.nu [secret]

# The raibid CLI (see the subcommands).
export def main []: nothing -> nothing {
  print "raibid: the CLI over the dispatcher's API (RAIBID_URL, RAIBID_API_TOKEN). Each command takes --help:
  jobs [--status] [--repo] [--limit] [--full]     jobs submit <repo-url> [--ref] [--sha] [--image name[:tag]]
  jobs show <id>    jobs logs <id> [--follow]     jobs cancel <id>    jobs retry <id>
  artifacts <id>    artifacts get <id> [path] [--out]
  queue    agents   cache [--dir]    cache mirrors [--dir]    cache prune [--max-bytes] [--older-than] [--force]
  mirror status [--refresh]   (the GitHub -> Gitea mirror mapping the dispatcher uses)
  schedule list    schedule add <repo-url> <cron> [--ref] [--timezone] [--vars]    schedule rm|run|pause|resume <id>
In Nushell it returns tables: use scripts/raibid.nu; raibid jobs --status failed | sort-by received"
}

# The job statuses, from the contract (completion of --status).
def statuses []: nothing -> list<string> { job-statuses }

# List jobs, newest first. The columns fit 100 terminal columns; `--full` gives whole records.
@example "failed jobs of one repository" { raibid jobs --status failed --repo hello }
@example "the 200 newest, as records" { raibid jobs --limit 200 --full }
export def "jobs" [
  --status: string@statuses # queued, running, building, testing, publishing, succeeded, failed, cancelled or timed_out
  --repo: string            # substring of the repository URL
  --limit: int = 50         # at most this many jobs (pages are fetched as needed)
  --full                    # whole Job records instead of table rows
]: nothing -> table {
  let known = (job-statuses)
  if $status != null and $status not-in $known {
    fail bad_status $"'($status)' is not a job status" --hint $"one of ($known | str join ', ')" --span (metadata $status).span
  }
  if $limit < 1 { fail bad_limit "--limit must be at least 1" --span (metadata $limit).span }
  mut jobs = []
  mut cursor: any = null
  loop {
    let want = ([($limit - ($jobs | length)) 500] | math min)
    let q = ({status: $status, repo: $repo, limit: $want, cursor: $cursor} | transpose k v | where v != null
      | reduce --fold {} {|r, acc| $acc | insert $r.k $r.v })
    let page = (call GET $"/jobs?($q | url build-query)")
    $jobs = ($jobs | append $page.jobs)
    $cursor = $page.next_cursor
    if $cursor == null or ($jobs | length) >= $limit { break }
  }
  if $full { $jobs | each {|j| $j | normalize-job } } else { $jobs | each {|j| $j | job-row } }
}

# Submit a job: build and test a repository at a ref (or an exact commit); with `--image`, build a
# container image from its Containerfile (or Dockerfile), test and publish it (an image job).
@example "build main of a Gitea repository" { raibid jobs submit http://git.raibid.internal/octo/hello.git }
@example "a branch at an exact commit" { raibid jobs submit https://git.example/o/r.git --ref feature --sha 0123456789abcdef0123456789abcdef01234567 }
@example "an image job: build, test and publish team/app:v1" { raibid jobs submit https://git.example/team/app.git --image team/app:v1 }
export def "jobs submit" [
  repo_url: string          # clone URL
  --ref: string = "main"    # branch name or full ref (refs/heads/…, refs/tags/…)
  --sha: string             # exact commit (40 or 64 hex characters)
  --image: string           # an image job: the image name[:tag] (default tags: the short sha and the branch)
  --no-publish              # image job: build and test, push nothing
]: nothing -> record {
  mut body = {repo_url: $repo_url, ref: $ref, sha: $sha}
  if $image != null {
    let m = ($image | parse --regex '^(?<name>.+?)(?::(?<tag>[A-Za-z0-9_][A-Za-z0-9_.-]*))?$')
    let name = ($m.0?.name? | default "")
    if $name == "" { fail bad_image $"'($image)' is not an image name[:tag]" --span (metadata $image).span }
    let tag = ($m.0.tag? | default "")
    $body = ($body | insert image ({name: $name}
      | merge (if $tag == "" { {} } else { {tags: [$tag]} })
      | merge (if $no_publish { {publish: false} } else { {} })))
  } else if $no_publish {
    fail bad_argument "--no-publish is for image jobs" --hint "add --image name[:tag]" --span (metadata $no_publish).span
  }
  call POST "/jobs" --body $body | normalize-job
}

# One job with its steps and timestamps, its public page (`page_url`), the hand-over links
# (`handed_over_to`, `handed_over_from`), an image job's pushed references and digests (`pushed`) and,
# when its log hit the cap, how much was kept (`log_truncated`).
@example "why did it fail?" { raibid jobs show 01JD0000000000000000000000 | get failure_reason }
@example "what an image job pushed" { raibid jobs show 01JD0000000000000000000000 | get pushed }
export def "jobs show" [
  id: string  # job id
]: nothing -> record {
  let j = (call GET $"/jobs/($id)" | normalize-job)
  if ($j.image? | default null) == null { $j } else { $j | insert pushed ($j.image.pushed? | default []) }
}

# Log lines of a job, as records; `--follow` prints them live as plain lines (`[step] line`, as `tail -f`
# does) until the job ends, then `finished: <status>`.
@example "stderr of the test step" { raibid jobs logs 01JD0000000000000000000000 | where step == test and stream == stderr }
@example "watch a running job" { raibid jobs logs 01JD0000000000000000000000 --follow }
export def "jobs logs" [
  id: string     # job id
  --follow (-f)  # print new lines as they come until the job is finished
]: nothing -> any {
  if not $follow {
    let r = (call GET $"/jobs/($id)/logs")
    if $r.truncated {
      let cut = (call GET $"/jobs/($id)" | get log_truncated? | default null)
      let how = if $cut == null { "" } else {
        $": kept ($cut.kept_lines) lines \(($cut.kept_bytes | into filesize)\), dropped ($cut.dropped_lines) lines \(($cut.dropped_bytes | into filesize)\)"
      }
      print -e $"raibid: the log hit its size cap($how)"
    }
    return ($r.lines | each {|l| $l | update ts { into datetime } })
  }
  # Fails early (404, 401) with the API's message before streaming starts.
  call GET $"/jobs/($id)" | ignore
  let url = (api-url $"/jobs/($id)/logs?follow=true")
  let token = (secret RAIBID_API_TOKEN)
  # Ctrl-C stops following quietly, as it stops `tail -f`.
  try { follow-lines $url $token } catch {|e| if not (try { interrupted $e } catch { true }) { $e.raw } }
}

def follow-lines [url: string, token: string] {
  http get --raw --headers {Authorization: $"Bearer ($token)", Accept: "text/event-stream"} $url
  | lines
  | where {|l| $l =~ '^(event|data):' }
  | window 2
  | where {|w| ($w.0 | str starts-with "event:") and ($w.1 | str starts-with "data:") }
  | each {|w|
      let event = ($w.0 | str substring 6.. | str trim)
      let data = ($w.1 | str substring 5.. | str trim | from json)
      if $event == "end" {
        print $"finished: ($data.status)"
        {end: true}
      } else {
        print $"[($data.step)] ($data.line)"
        {end: false}
      }
    }
  | take until {|r| $r.end }
  | ignore
}

# Ask the dispatcher to cancel a queued or running job.
export def "jobs cancel" [
  id: string  # job id
]: nothing -> record {
  call POST $"/jobs/($id)/cancel" | normalize-job
}

# Run a finished job again (a new job whose retry_of is this one).
export def "jobs retry" [
  id: string  # job id
]: nothing -> record {
  call POST $"/jobs/($id)/retry" | normalize-job
}

# The files a job uploaded (`.raibid.yaml` `artifacts:`): name, size, sha256 digest, download URL.
@example "the release binary of a job" { raibid artifacts 01JD0000000000000000000000 | where name =~ release }
export def "artifacts" [
  id: string  # job id
]: nothing -> table {
  call GET $"/jobs/($id)/artifacts" | get files | each {|f| $f | update size { into filesize } }
}

# Download one of a job's artifacts (the only one when `path` is left out) to `--out` (default: its
# file name in the current directory). The bytes' SHA-256 is checked against the recorded digest.
@example "fetch the release binary" { raibid artifacts get 01JD0000000000000000000000 target/release/mytool }
export def "artifacts get" [
  id: string        # job id
  path?: string     # the artifact's name (its path in the workspace) or its digest (sha256:…)
  --out (-o): path  # where to write it (default: the file name, in the current directory)
  --force (-f)      # overwrite an existing file
]: nothing -> record {
  let files = (call GET $"/jobs/($id)/artifacts" | get files)
  if ($files | is-empty) { fail no_artifacts $"job ($id) has no artifacts" --hint "the pipeline needs `artifacts:` in .raibid.yaml" }
  let file = if $path == null {
    if ($files | length) > 1 {
      fail ambiguous_artifact $"job ($id) has ($files | length) artifacts; name one" --hint ($files | get name | str join ', ')
    }
    $files.0
  } else {
    let m = ($files | where {|f| $f.name == $path or $f.digest == $path })
    if ($m | is-empty) {
      fail unknown_artifact $"job ($id) has no artifact '($path)'" --hint ($files | get name | str join ', ') --span (metadata $path).span
    }
    $m.0
  }
  let dest = ($out | default ($file.name | path basename) | path expand)
  if ($dest | path exists) and not $force {
    fail file_exists $"($dest) exists" --hint "pass --force to overwrite, or --out another path"
  }
  let enc = ($file.name | split row '/' | each {|c| $c | url encode --all } | str join '/')
  let token = (secret RAIBID_API_TOKEN --purpose 'the dispatcher API')
  let part = $"($dest).part"
  http get --raw --headers {Authorization: $"Bearer ($token)"} (api-url $"/jobs/($id)/artifacts/($enc)") | save --raw --force $part
  let got = $"sha256:(open --raw $part | hash sha256)"
  if $got != $file.digest {
    rm -f $part
    fail digest_mismatch $"($file.name): downloaded bytes have ($got), the job recorded ($file.digest)"
  }
  mv --force $part $dest
  {name: $file.name, size: ($file.size | into filesize), digest: $file.digest, path: $dest}
}

# Build-matrix groups, newest first: one row per push that fanned out (`matrix:` in .raibid.yaml), with
# its combined status and how many of its cells ended and failed.
@example "groups that failed" { raibid groups | where status == failed }
export def "groups" [
  --limit: int = 20  # at most this many groups (1-100)
]: nothing -> table {
  if $limit < 1 or $limit > 100 { fail bad_limit "--limit must be between 1 and 100" --span (metadata $limit).span }
  call GET $"/groups?limit=($limit)" | get groups | each {|g| $g | group-row }
}

# One group: its combined status and its cells (one row each: id, values, status, step).
@example "the failing cells of a group" { raibid groups show 01JD0000000000000000000000 | get cells | where status == failed }
export def "groups show" [
  id: string  # the group's id (the push's job id)
]: nothing -> record {
  let g = (call GET $"/groups/($id)")
  ($g | group-row) | upsert cells ($g.cells | each {|c| $c | job-row | insert cell ($c.matrix.values | each {|v| $"($v.axis)=($v.value)" } | str join ', ') | select id cell status step duration })
}

# Cancel a whole group: every cell not finished yet, then the group (one cell: `jobs cancel <cell>`).
export def "groups cancel" [
  id: string  # the group's id
]: nothing -> record {
  call POST $"/groups/($id)/cancel" | group-row
}

# Run a whole group again: a new push job that fans out anew (one cell: `jobs retry <cell>`, which
# replaces it in its group).
export def "groups retry" [
  id: string  # the group's id
]: nothing -> record {
  call POST $"/groups/($id)/retry" | normalize-job
}

def group-row []: record -> record {
  let g = $in
  {
    id: $g.group.id
    status: $g.status
    repo: ($g.group.source.repo_url | short-repo)
    ref: ($g.group.source.ref | str replace --regex '^refs/(heads|tags)/' '')
    cells: ($g.cells | length)
    ended: ($g.cells | where status in [succeeded failed cancelled timed_out] | length)
    failed: ($g.cells | where status in [failed timed_out] | length)
  }
}

# Queue figures: stream length, consumer-group lag (what KEDA scales on), pending, oldest waiting job.
export def "queue" []: nothing -> record {
  call GET "/queue"
}

# Agents with their current job and last heartbeat.
export def "agents" []: nothing -> table {
  (call GET "/agents").agents | each {|a|
    let hb = ($a.last_heartbeat | into datetime)
    $a | update last_heartbeat $hb | insert heartbeat_age ((date now) - $hb)
  }
}

# The GitHub → Gitea mirror mapping the dispatcher uses: one row per mirror (`source`: `gitea` = read from
# Gitea's pull mirrors, `override` = RAIBID_MIRRORS). A GitHub push for a repository not listed builds nothing.
# Notes on stderr: a failed read of Gitea (the last mapping is shown), no GitHub token (statuses on Gitea only).
@example "which GitHub repositories build here" { raibid mirror status | get github }
@example "read Gitea now (after `mirror.nu repo`)" { raibid mirror status --refresh }
export def "mirror status" [
  --refresh   # make the dispatcher read Gitea now instead of answering from its cache
]: nothing -> table {
  let r = (call GET (if $refresh { "/mirrors?refresh=true" } else { "/mirrors" }))
  if ($r.error? | is-not-empty) {
    print -e $"raibid: the dispatcher could not read Gitea \(($r.error)\); this is its last mapping"
  }
  if not ($r.github_statuses? | default false) {
    print -e "raibid: no RAIBID_GITHUB_TOKEN on the dispatcher: commit statuses go to Gitea only (docs/operations.md)"
  }
  let read = ($r.read_at? | default null | if $in == null { null } else { into datetime })
  $r.mirrors | each {|m|
    {
      github: $m.github
      gitea: $m.gitea
      source: $m.source
      original_url: ($m.original_url? | default null)
      github_statuses: ($r.github_statuses? | default false)
      read_at: $read
    }
  }
}

# The cargo target slots in a node's cache directory: one row per slot with its keys, size, last use and
# whether a job holds it now (its `flock` lock is taken). `cache mirrors` lists the git mirrors.
@example "the biggest slots" { raibid cache --dir /var/lib/raibid/cache | sort-by bytes | last 5 }
export def "cache" [
  --dir: path   # the cache directory (default: RAIBID_CACHE_DIR, else /tmp/raibid/cache)
]: nothing -> table {
  let root = (cache-root $dir)
  let targets = ($root | path join targets)
  if not ($targets | path exists) { return [] }
  ls $targets | where type == dir | each {|repo|
    ls $repo.name | where type == dir and ($it.name | path basename) =~ '^slot-\d+$' | each {|slot|
      let meta_file = ($slot.name | path join meta.json)
      let meta = if ($meta_file | path exists) { open $meta_file } else { {repo: "", branch: "", last_used_ms: 0, job: null, keys: {}, src_bytes: 0} }
      let keys = ($meta.keys? | default {})
      {
        repo: ($meta.repo? | default "")
        repo_id: ($repo.name | path basename)
        slot: ($slot.name | path basename)
        branch: ($meta.branch? | default "")
        keys: ($keys | columns)
        bytes: ((($keys | values | each {|k| $k.bytes } | math sum) + ($meta.src_bytes? | default 0)) | into filesize)
        last_used: (($meta.last_used_ms? | default 0) * 1_000_000 | into datetime)
        in_use: (slot-in-use ($repo.name | path join $"($slot.name | path basename).lock"))
        job: ($meta.job? | default null)
        path: $slot.name
      }
    }
  } | flatten
}

# The git mirrors in a node's cache directory (`git/<repo-id>.git`, one bare repository per repository,
# updated under `git/<repo-id>.lock`): size, packs, last use (the mtime of its `raibid-mirror-ok` marker,
# touched by every update), whether it is trusted (a mirror without the marker is rebuilt before any use)
# and whether a fetch holds it now. The repository URL is never stored in a mirror (no credential in a
# URL lands on disk); it is taken from a slot of the same repository when there is one.
@example "mirrors by size" { raibid cache mirrors --dir /var/lib/raibid/cache | sort-by bytes }
export def "cache mirrors" [
  --dir: path   # the cache directory (default: RAIBID_CACHE_DIR, else /tmp/raibid/cache)
]: nothing -> table {
  let root = (cache-root $dir)
  let git = ($root | path join git)
  if not ($git | path exists) { return [] }
  let repos = (cache --dir $dir | select repo_id repo | uniq-by repo_id)
  ls $git | where type == dir and ($it.name | str ends-with '.git') | each {|m|
    let id = ($m.name | path basename | str replace --regex '\.git$' '')
    let marker = ($m.name | path join raibid-mirror-ok)
    let trusted = ($marker | path exists)
    let packs = ($m.name | path join objects pack)
    {
      repo: ($repos | where repo_id == $id | get repo.0? | default "")
      repo_id: $id
      bytes: (du $m.name | get 0.physical? | default 0b)
      packs: (if ($packs | path exists) { ls $packs | where name =~ '\.pack$' | length } else { 0 })
      last_used: (if $trusted { (ls $marker | get 0.modified) } else { 0 | into datetime })
      trusted: $trusted
      in_use: (slot-in-use ($git | path join $"($id).lock"))
      path: $m.name
    }
  }
}

# Delete slots no job holds: the least recently used first until the total is under --max-bytes, and/or
# those unused for longer than --older-than. Without --force it only lists what it would delete. Each slot
# is deleted while holding its lock (`flock --nonblock`), so a job can never take a slot being deleted.
@example "what would go to get under 200 GiB" { raibid cache prune --dir /var/lib/raibid/cache --max-bytes 200GiB }
@example "delete slots unused for a week" { raibid cache prune --older-than 1wk --force }
export def "cache prune" [
  --dir: path                # the cache directory (default: RAIBID_CACHE_DIR, else /tmp/raibid/cache)
  --max-bytes: filesize      # delete least recently used slots until the total is at most this
  --older-than: duration     # delete slots last used longer ago than this
  --force                    # really delete (default: list what would be deleted)
]: nothing -> table {
  if $max_bytes == null and $older_than == null {
    fail missing_argument "say what to prune" --hint "give --max-bytes and/or --older-than"
  }
  if (which flock | is-empty) { fail missing_tool "flock is not installed" --hint "apt-get install util-linux" }
  let slots = (cache --dir $dir | sort-by last_used)
  mut total = ($slots | get bytes | math sum | default 0b)
  mut out = []
  for s in $slots {
    let old = ($older_than != null and $s.last_used < ((date now) - $older_than))
    let big = ($max_bytes != null and $total > $max_bytes)
    if not ($old or $big) { continue }
    if $s.in_use { continue }
    let lock = ($s.path | path dirname | path join $"($s.slot).lock")
    let deleted = if $force {
      (do { ^flock --nonblock $lock rm -rf -- $s.path } | complete).exit_code == 0
    } else { false }
    if $deleted or not $force { $total = $total - $s.bytes }
    $out = ($out | append ($s | select repo slot keys bytes last_used | insert deleted $deleted))
  }
  $out
}

# Scheduled builds: one row per schedule with its next run and the status of its last job.
@example "what runs tonight" { raibid schedule list | where not paused | sort-by next_run }
export def "schedule list" []: nothing -> table {
  (call GET "/schedules").schedules | each {|s| $s | schedule-row }
}

# Add a schedule: build a repository's ref on a cron expression (5 fields, or 6 with seconds first, or
# @daily …) read in an IANA time zone, optionally as a pipeline variant: variables every step sees
# (`--vars {CARGO_UPDATE: "1"}` or `--vars CARGO_UPDATE=1,FEATURES=all`).
@example "nightly cargo update + test at 03:00 Berlin time" { raibid schedule add https://git.example/o/r.git "0 3 * * *" --timezone Europe/Berlin --vars {CARGO_UPDATE: "1"} }
export def "schedule add" [
  repo_url: string           # clone URL
  cron: string               # cron expression, e.g. "0 3 * * *"
  --ref: string = "main"     # branch name or full ref
  --timezone: string = "UTC" # IANA time zone of the expression
  --vars: any                # pipeline variant: a record, or KEY=VALUE pairs separated by commas
  --paused                   # create it paused
  --skip-unchanged           # skip a due time whose commit this schedule already built successfully
]: nothing -> record {
  let variant = match ($vars | describe | str replace --regex '<.*' '') {
    "nothing" => { {} }
    "record" => $vars
    "string" => ($vars | split row ',' | where {|p| ($p | str trim) != "" } | each {|p|
      let kv = ($p | split row --number 2 '=')
      if ($kv | length) != 2 { fail bad_vars $"'($p)' is not KEY=VALUE" --span (metadata $vars).span }
      {k: ($kv.0 | str trim), v: $kv.1}
    } | reduce --fold {} {|r, acc| $acc | insert $r.k $r.v })
    _ => { fail bad_vars "--vars takes a record or KEY=VALUE,KEY2=VALUE2" --span (metadata $vars).span }
  }
  let body = {repo_url: $repo_url, ref: $ref, cron: $cron, timezone: $timezone, env: $variant, paused: $paused, skip_unchanged: $skip_unchanged}
  call POST "/schedules" --body $body | schedule-row
}

# Delete a schedule (its jobs stay).
export def "schedule rm" [
  id: string  # schedule id (sch_…)
]: nothing -> record {
  call DELETE $"/schedules/($id)" | ignore
  {id: $id, deleted: true}
}

# Run a schedule now (a job like its due times make; paused or not).
export def "schedule run" [
  id: string  # schedule id (sch_…)
]: nothing -> record {
  call POST $"/schedules/($id)/run" | normalize-job
}

# Pause a schedule: no due time fires until it is resumed.
export def "schedule pause" [
  id: string  # schedule id (sch_…)
]: nothing -> record {
  call PATCH $"/schedules/($id)" --body {paused: true} | schedule-row
}

# Resume a paused schedule: it fires from its next due time (the ones that passed while paused do not).
export def "schedule resume" [
  id: string  # schedule id (sch_…)
]: nothing -> record {
  call PATCH $"/schedules/($id)" --body {paused: false} | schedule-row
}

def schedule-row []: record -> record {
  let s = $in
  let date = {|v| if $v == null { null } else { $v | into datetime } }
  {
    id: $s.id
    repo: ($s.repo_url | short-repo)
    ref: ($s.ref | str replace --regex '^refs/(heads|tags)/' '')
    cron: $s.cron
    timezone: $s.timezone
    env: ($s.env? | default {})
    paused: $s.paused
    next_run: (do $date $s.next_run)
    last_status: $s.last_status
    last_job: $s.last_job
  }
}

def cache-root [dir: any]: nothing -> path {
  if $dir != null { return $dir }
  $env.RAIBID_CACHE_DIR? | default "/tmp/raibid/cache"
}

# A job holds the slot when its lock file is locked (flock works across pods on one node).
def slot-in-use [lock: path]: nothing -> bool {
  if not ($lock | path exists) { return false }
  (do { ^flock --nonblock --shared $lock true } | complete).exit_code != 0
}

# Run as a script (`nu scripts/raibid.nu jobs`, `./scripts/raibid jobs`), Nushell calls `main <command>`:
# these aliases; used as a module, the same commands are `raibid <command>`.

# List jobs, newest first. The columns fit 100 terminal columns; `--full` gives whole records.
alias "main jobs" = jobs
# Submit a job: build and test a repository at a ref (or an exact commit); with `--image`, build a
alias "main jobs submit" = jobs submit
# One job with its steps and timestamps.
alias "main jobs show" = jobs show
# Log lines of a job, as records; `--follow` prints them live as plain lines (`[step] line`, as `tail -f`
alias "main jobs logs" = jobs logs
# Ask the dispatcher to cancel a queued or running job.
alias "main jobs cancel" = jobs cancel
# Run a finished job again (a new job whose retry_of is this one).
alias "main jobs retry" = jobs retry
# Build-matrix groups, newest first: one row per push that fanned out (`matrix:` in .raibid.yaml), with
alias "main groups" = groups
# One group: its combined status and its cells (one row each: id, values, status, step).
alias "main groups show" = groups show
# Cancel a whole group: every cell not finished yet, then the group (one cell: `jobs cancel <cell>`).
alias "main groups cancel" = groups cancel
# Run a whole group again: a new push job that fans out anew (one cell: `jobs retry <cell>`, which
alias "main groups retry" = groups retry
# Queue figures: stream length, consumer-group lag (what KEDA scales on), pending, oldest waiting job.
alias "main queue" = queue
# Agents with their current job and last heartbeat.
alias "main agents" = agents
# The GitHub → Gitea mirror mapping the dispatcher uses: one row per mirror (`source`: `gitea` = read from
alias "main mirror status" = mirror status
# The cargo target slots in a node's cache directory: one row per slot with its keys, size, last use and
alias "main cache" = cache
# The git mirrors in a node's cache directory (`git/<repo-id>.git`, one bare repository per repository,
alias "main cache mirrors" = cache mirrors
# Delete slots no job holds: the least recently used first until the total is under --max-bytes, and/or
alias "main cache prune" = cache prune
# Scheduled builds: one row per schedule with its next run and the status of its last job.
alias "main schedule list" = schedule list
# Add a schedule: build a repository's ref on a cron expression (5 fields, or 6 with seconds first, or
alias "main schedule add" = schedule add
# Delete a schedule (its jobs stay).
alias "main schedule rm" = schedule rm
# Run a schedule now (a job like its due times make; paused or not).
alias "main schedule run" = schedule run
# Pause a schedule: no due time fires until it is resumed.
alias "main schedule pause" = schedule pause
# Resume a paused schedule: it fires from its next due time (the ones that passed while paused do not).
alias "main schedule resume" = schedule resume
