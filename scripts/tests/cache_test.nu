# Tests of `raibid.nu cache` against a cache directory laid out as the agent lays it out
# (rust/raibid-agent/src/cache: targets/<repo-id>/slot-<n>/{src,target/<key>,meta.json} + slot-<n>.lock),
# with a real `flock` holder standing in for a running job.

use std/assert
use std/testing *
use ../raibid.nu

def slot [root: path, repo: string, n: int, last_used_ms: int, bytes: int] {
  let dir = ($root | path join targets $repo $"slot-($n)")
  mkdir ($dir | path join src) ($dir | path join target k1)
  "" | save -f ($root | path join targets $repo $"slot-($n).lock")
  {repo: $"file:///repos/($repo)", branch: main, last_used_ms: $last_used_ms, job: null,
    keys: {k1: {last_used_ms: $last_used_ms, bytes: $bytes}}, src_bytes: 0} | to json | save -f ($dir | path join meta.json)
}

def with-cache [body: closure] {
  let root = (mktemp -d)
  do $body $root
  rm -rf $root
}

@test
def cache_lists_slots_with_sizes_last_use_and_locks [] {
  with-cache {|root|
    let now = ((date now | into int) // 1_000_000)
    slot $root repo-a 0 ($now - 3_600_000) 1000
    slot $root repo-a 1 $now 2000
    slot $root repo-b 0 ($now - 86_400_000) 4000
    let rows = (raibid cache --dir $root)
    assert equal ($rows | length) 3
    assert equal ($rows | where repo_id == repo-a | get slot | sort) [slot-0 slot-1]
    assert equal ($rows | where repo_id == repo-b | first | get bytes) 4000b
    assert equal ($rows | first | get keys) [k1]
    assert equal ($rows | where in_use | length) 0
  }
}

@test
def prune_deletes_least_recently_used_free_slots_and_never_a_held_one [] {
  with-cache {|root|
    let now = ((date now | into int) // 1_000_000)
    slot $root repo-a 0 ($now - 3_600_000) 1000
    slot $root repo-a 1 $now 2000
    slot $root repo-b 0 ($now - 86_400_000) 4000
    # A job holds repo-b/slot-0 (the oldest): flock, as the agent takes it.
    let lock = ($root | path join targets repo-b slot-0.lock)
    let holder = (job spawn { ^flock $lock sleep 30 })
    mut tries = 0
    while not ((raibid cache --dir $root | where repo_id == repo-b | first).in_use) {
      $tries = $tries + 1
      if $tries > 500 { error make {msg: "the holder never took the lock"} }
      sleep 10ms
    }
    let dry = (raibid cache prune --dir $root --max-bytes 6500b)
    assert equal ($dry | get deleted) [false]
    assert equal ($dry | get slot) [slot-0]
    assert ($root | path join targets repo-a slot-0 | path exists)
    let done = (raibid cache prune --dir $root --max-bytes 6500b --force)
    assert equal ($done | get deleted) [true]
    assert not ($root | path join targets repo-a slot-0 | path exists)
    assert ($root | path join targets repo-b slot-0 | path exists) "a held slot is never deleted"
    job kill $holder
    assert equal (try { raibid cache prune --dir $root } catch {|e| $e.msg }) "say what to prune"
  }
}

# A real bare repository with a real pack (git), as the agent's mirror update leaves it.
def mirror [root: path, repo_id: string, trusted: bool] {
  let dir = ($root | path join git $"($repo_id).git")
  mkdir ($root | path join git)
  ^git init -q --bare $dir
  let work = (mktemp -d)
  ^git -C $work init -q
  "x" | save -f ($work | path join f)
  ^git -C $work add f
  ^git -C $work -c user.name=t -c user.email=t@t commit -qm one
  ^git -C $work push -q $dir HEAD:refs/heads/main
  ^git -C $dir repack -a -d -q
  rm -rf $work
  "" | save -f ($root | path join git $"($repo_id).lock")
  if $trusted { "" | save -f ($dir | path join raibid-mirror-ok) }
}

@test
def cache_mirrors_lists_each_mirror_with_size_packs_use_and_trust [] {
  with-cache {|root|
    let now = ((date now | into int) // 1_000_000)
    slot $root repo-a 0 $now 1000
    mirror $root repo-a true
    mirror $root repo-z false
    let lock = ($root | path join git repo-a.lock)
    let holder = (job spawn { ^flock $lock sleep 30 })
    mut tries = 0
    while not ((raibid cache mirrors --dir $root | where repo_id == repo-a | first).in_use) {
      $tries = $tries + 1
      if $tries > 500 { error make {msg: "the holder never took the lock"} }
      sleep 10ms
    }
    let rows = (raibid cache mirrors --dir $root | sort-by repo_id)
    job kill $holder
    assert equal ($rows | get repo_id) [repo-a repo-z]
    let a = ($rows | first)
    assert equal $a.repo "file:///repos/repo-a" "the URL comes from the repository's slot"
    assert $a.trusted
    assert $a.in_use
    assert equal $a.packs 1
    assert ($a.bytes > 0b)
    assert (((date now) - $a.last_used) < 1min)
    let z = ($rows | last)
    assert equal $z.repo ""
    assert not $z.trusted "no marker: rebuilt before any use"
    assert not $z.in_use
  }
}
