#!/usr/bin/env nu
# raibid: a terminal CLI over the dispatcher's API. Every command returns Nushell tables or records, so
# results pipe into `where`, `sort-by`, `get`:
#
#   nu scripts/raibid.nu jobs --status failed | sort-by received | last 5
#
# `cache` works on a node's cache directory directly (RAIBID_CACHE_DIR or --dir; on the Spark the
# hostPath of the raibid-cache PersistentVolume), not through the API.
#
# The dispatcher is found through RAIBID_URL and authenticated with RAIBID_API_TOKEN (or
# RAIBID_API_TOKEN_FILE): `./scripts/dev.sh env` prints both for the local stack, bootstrap's summary for
# the Spark. Nothing else is read.

use lib/env.nu
use lib/errors.nu [fail]
use lib/api.nu *
use lib/secrets.nu [secret]

# The raibid CLI (see the subcommands).
export def main []: nothing -> nothing {
  print (help main)
}

# List jobs, newest first.
@example "failed jobs of one repository" { nu scripts/raibid.nu jobs --status failed --repo hello }
@example "the 200 newest, as records" { nu scripts/raibid.nu jobs --limit 200 --full }
export def "main jobs" [
  --status: string          # queued, running, succeeded, failed, cancelled or timed_out
  --repo: string            # substring of the repository URL
  --limit: int = 50         # at most this many jobs (pages are fetched as needed)
  --full                    # whole Job records instead of table rows
]: nothing -> table {
  if $status != null and $status not-in $STATUSES {
    fail bad_status $"'($status)' is not a job status" --hint $"one of ($STATUSES | str join ', ')" --span (metadata $status).span
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

# Submit a job: build and test a repository at a ref (or an exact commit).
@example "build main of a Gitea repository" { nu scripts/raibid.nu jobs submit http://git.raibid.internal/octo/hello.git }
@example "a branch at an exact commit" { nu scripts/raibid.nu jobs submit https://git.example/o/r.git --ref feature --sha 0123456789abcdef0123456789abcdef01234567 }
export def "main jobs submit" [
  repo_url: string          # clone URL
  --ref: string = "main"    # branch name or full ref (refs/heads/…, refs/tags/…)
  --sha: string             # exact commit (40 or 64 hex characters)
]: nothing -> record {
  call POST "/jobs" --body {repo_url: $repo_url, ref: $ref, sha: $sha} | normalize-job
}

# One job with its steps and timestamps.
@example "why did it fail?" { nu scripts/raibid.nu jobs show 01JD0000000000000000000000 | get failure_reason }
export def "main jobs show" [
  id: string  # job id
]: nothing -> record {
  call GET $"/jobs/($id)" | normalize-job
}

# Log lines of a job; `--follow` streams them live until the job ends.
@example "stderr of the test step" { nu scripts/raibid.nu jobs logs 01JD0000000000000000000000 | where step == test and stream == stderr }
@example "watch a running job" { nu scripts/raibid.nu jobs logs 01JD0000000000000000000000 --follow }
export def "main jobs logs" [
  id: string     # job id
  --follow (-f)  # stream new lines until the job is finished
]: nothing -> any {
  if not $follow {
    let r = (call GET $"/jobs/($id)/logs")
    if $r.truncated { print -e "raibid: the log was truncated by the dispatcher's size limit" }
    return ($r.lines | each {|l| $l | update ts { into datetime } })
  }
  # Fails early (404, 401) with the API's message before streaming starts.
  call GET $"/jobs/($id)" | ignore
  let url = (api-url $"/jobs/($id)/logs?follow=true")
  let token = (secret RAIBID_API_TOKEN)
  http get --raw --headers {Authorization: $"Bearer ($token)", Accept: "text/event-stream"} $url
  | lines
  | where {|l| $l =~ '^(event|data):' }
  | window 2
  | where {|w| ($w.0 | str starts-with "event:") and ($w.1 | str starts-with "data:") }
  | each {|w|
      let event = ($w.0 | str substring 6.. | str trim)
      let data = ($w.1 | str substring 5.. | str trim | from json)
      if $event == "end" {
        print -e $"raibid: job ($id) finished: ($data.status)"
        {end: true}
      } else {
        $data | update ts { into datetime }
      }
    }
  | take until {|r| $r.end? == true }
}

# Ask the dispatcher to cancel a queued or running job.
export def "main jobs cancel" [
  id: string  # job id
]: nothing -> record {
  call POST $"/jobs/($id)/cancel" | normalize-job
}

# Run a finished job again (a new job whose retry_of is this one).
export def "main jobs retry" [
  id: string  # job id
]: nothing -> record {
  call POST $"/jobs/($id)/retry" | normalize-job
}

# Queue figures: stream length, consumer-group lag (what KEDA scales on), pending, oldest waiting job.
export def "main queue" []: nothing -> record {
  call GET "/queue"
}

# Agents with their current job and last heartbeat.
export def "main agents" []: nothing -> table {
  (call GET "/agents").agents | each {|a|
    let hb = ($a.last_heartbeat | into datetime)
    $a | update last_heartbeat $hb | insert heartbeat_age ((date now) - $hb)
  }
}

# The cargo target slots in a node's cache directory: one row per slot with its keys, size, last use and
# whether a job holds it now (its `flock` lock is taken). `cache mirrors` lists the git mirrors.
@example "the biggest slots" { nu scripts/raibid.nu cache --dir /var/lib/raibid/cache | sort-by bytes | last 5 }
export def "main cache" [
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
@example "mirrors by size" { nu scripts/raibid.nu cache mirrors --dir /var/lib/raibid/cache | sort-by bytes }
export def "main cache mirrors" [
  --dir: path   # the cache directory (default: RAIBID_CACHE_DIR, else /tmp/raibid/cache)
]: nothing -> table {
  let root = (cache-root $dir)
  let git = ($root | path join git)
  if not ($git | path exists) { return [] }
  let repos = (main cache --dir $dir | select repo_id repo | uniq-by repo_id)
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
@example "what would go to get under 200 GiB" { nu scripts/raibid.nu cache prune --dir /var/lib/raibid/cache --max-bytes 200GiB }
@example "delete slots unused for a week" { nu scripts/raibid.nu cache prune --older-than 1wk --force }
export def "main cache prune" [
  --dir: path                # the cache directory (default: RAIBID_CACHE_DIR, else /tmp/raibid/cache)
  --max-bytes: filesize      # delete least recently used slots until the total is at most this
  --older-than: duration     # delete slots last used longer ago than this
  --force                    # really delete (default: list what would be deleted)
]: nothing -> table {
  if $max_bytes == null and $older_than == null {
    fail missing_argument "say what to prune" --hint "give --max-bytes and/or --older-than"
  }
  if (which flock | is-empty) { fail missing_tool "flock is not installed" --hint "apt-get install util-linux" }
  let slots = (main cache --dir $dir | sort-by last_used)
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

def cache-root [dir: any]: nothing -> path {
  if $dir != null { return $dir }
  $env.RAIBID_CACHE_DIR? | default "/tmp/raibid/cache"
}

# A job holds the slot when its lock file is locked (flock works across pods on one node).
def slot-in-use [lock: path]: nothing -> bool {
  if not ($lock | path exists) { return false }
  (do { ^flock --nonblock --shared $lock true } | complete).exit_code != 0
}
