#!/usr/bin/env nu
# Run the Nushell test suite: every `*_test.nu` file in this directory (or the files given), every command in
# it marked `@test` (std/testing), each in its own `nu` process so tests cannot leak env or state into each
# other. Prints one line per test and ends with exactly `N passed, M failed`; exits non-zero on any failure.
#
#   nu scripts/tests/run.nu                              # everything
#   nu scripts/tests/run.nu scripts/tests/mirror_test.nu # one file
#   nu scripts/tests/run.nu --filter 'org'               # tests whose name matches a regex

const HERE = path self .

# List the @test commands of a test file (runs `nu` on it; a file that does not parse is an error).
def discover [file: path]: nothing -> record {
  let code = $"source '($file)'; scope commands | where {|c| 'test' in \($c.attributes | get name\) } | get name | to nuon"
  let r = (do { ^$nu.current-exe --no-config-file -c $code } | complete)
  if $r.exit_code != 0 {
    return {tests: [], error: ($r.stderr | str trim)}
  }
  {tests: ($r.stdout | from nuon), error: null}
}

def run-one [file: path, test: string]: nothing -> record {
  let start = (date now)
  let r = (do { ^$nu.current-exe --no-config-file -c $"source '($file)'; ($test)" } | complete)
  {
    file: ($file | path basename)
    test: $test
    ok: ($r.exit_code == 0)
    secs: (((date now) - $start) / 1sec | math round --precision 2)
    output: ([$r.stdout $r.stderr] | str join "" | str trim)
  }
}

def main [
  ...files: path          # test files (default: every *_test.nu next to this script)
  --filter: string = ""   # run only tests whose name matches this regex
  --verbose (-v)          # show the output of passing tests too
]: nothing -> nothing {
  let targets = if ($files | is-empty) {
    glob ($HERE | path join "*_test.nu") | sort
  } else {
    $files | each {|f| $f | path expand }
  }
  mut results = []
  for file in $targets {
    let found = (discover $file)
    if $found.error != null {
      print $"FAIL ($file | path basename): does not load\n($found.error | lines | each {|l| $'    ($l)' } | str join "\n")"
      $results = ($results | append {file: ($file | path basename), test: "<load>", ok: false, secs: 0, output: $found.error})
      continue
    }
    for test in ($found.tests | where {|t| ($filter | is-empty) or ($t =~ $filter) }) {
      let r = (run-one $file $test)
      let mark = if $r.ok { "PASS" } else { "FAIL" }
      print $"($mark) ($r.file)::($r.test) \(($r.secs)s\)"
      if (not $r.ok) or $verbose {
        if ($r.output | is-not-empty) { print ($r.output | lines | each {|l| $"    ($l)" } | str join "\n") }
      }
      $results = ($results | append $r)
    }
  }
  let passed = ($results | where ok | length)
  let failed = ($results | where not ok | length)
  if $failed > 0 {
    print "\nFailed:"
    for r in ($results | where not ok) { print $"  ($r.file)::($r.test)" }
  }
  print $"($passed) passed, ($failed) failed"
  if $failed > 0 or ($results | is-empty) { exit 1 }
}
