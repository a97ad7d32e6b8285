# Every `@example … --result …` of the shared library is run and must produce its stated result, so the
# examples in `help <command>` cannot rot.

use std/assert
use std/testing *
use helpers.nu *

@test
def library_examples_produce_their_results [] {
  let libs = (glob ($REPO_ROOT | path join scripts lib "*.nu"))
  mut checked = 0
  mut wrong = []
  for lib in $libs {
    let listing = (^$nu.current-exe --no-config-file -c $"use '($lib)' *; scope commands | where type == custom | where {|c| \($c.examples | any {|e| $e.result != null }\) } | select name examples | to nuon" | from nuon)
    for cmd in $listing {
      for ex in ($cmd.examples | where result != null) {
        let got = (do { ^$nu.current-exe --no-config-file -c $"use '($lib)' *; ($ex.example) | to nuon" } | complete)
        $checked += 1
        if $got.exit_code != 0 or ($got.stdout | str trim) != ($ex.result | to nuon) {
          $wrong = ($wrong | append $"($lib | path basename) ($cmd.name): `($ex.example)` gave ($got.stdout | str trim)($got.stderr | str trim), not ($ex.result | to nuon)")
        }
      }
    }
  }
  assert ($checked >= 10) $"only ($checked) examples with results found"
  assert equal $wrong [] ($wrong | str join "\n")
}
