# Tool version pins, read from scripts/pins.env (POSIX `KEY=value` lines). Never hard-code a version.

use errors.nu [fail]
use contract.nu [repo-root]

# Parse `KEY=value` lines (comments and blank lines ignored) into a record.
@example "parse pins" { "# c\nNUSHELL_VERSION=0.115.1\n" | parse-pins } --result {NUSHELL_VERSION: "0.115.1"}
export def parse-pins []: string -> record {
  $in | lines
  | where {|l| ($l | str trim) !~ '^(#|$)' }
  | parse --regex '^\s*(?<key>[A-Z0-9_]+)=(?<value>.*)$'
  | update value {|r| $r.value | str trim | str trim --char '"' | str trim --char "'" }
  | reduce --fold {} {|r, acc| $acc | upsert $r.key $r.value }
}

# Every pin as a record.
export def load-pins []: nothing -> record {
  open --raw (repo-root | path join scripts pins.env) | parse-pins
}

# One pin; fails with a hint when scripts/pins.env lacks it.
export def pin [name: string]: nothing -> string {
  let p = (load-pins | get -o $name)
  if $p == null {
    fail pin_missing $"scripts/pins.env has no ($name)" --hint $"append a line `($name)=<version>` to scripts/pins.env" --span (metadata $name).span
  }
  $p
}
