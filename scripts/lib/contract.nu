# The shared names of raibid-ci, read from their single definition: rust/raibid-core/src/contract.rs.
#
# Scripts never copy a value that is defined there (stream names, env var names, HTTP paths, the port);
# they read it with `contract`. The test suite checks that every env var the scripts use is defined there.

const ROOT = path self ../..

# The repository root (the `RAIBID_ROOT` that dev.sh exports wins).
export def repo-root []: nothing -> path {
  $env.RAIBID_ROOT? | default $ROOT
}

# Parse the `pub const NAME: &str = "value";` lines of a contract.rs text into {module: {NAME: value}}.
@example "parse one module" { "pub mod http {\n    pub const DEFAULT_PORT: &str = \"8080\";\n}" | parse-contract } --result {http: {DEFAULT_PORT: "8080"}}
export def parse-contract []: string -> record {
  mut current = ""
  mut out = {}
  for line in ($in | lines) {
    let m = ($line | parse --regex '^\s*pub mod (?<name>[a-z_]+)\s*\{')
    if ($m | is-not-empty) {
      $current = $m.0.name
      $out = ($out | upsert $current {})
      continue
    }
    let c = ($line | parse --regex '^\s*pub const (?<name>[A-Z0-9_]+): &str = "(?<value>[^"]*)";')
    if ($c | is-not-empty) and $current != "" {
      $out = ($out | upsert $current (($out | get $current) | upsert $c.0.name $c.0.value))
    }
  }
  $out
}

# The contract as a record: {keys: {...}, env: {...}, http: {...}}.
export def load-contract []: nothing -> record {
  let file = (repo-root | path join rust raibid-core src contract.rs)
  if not ($file | path exists) {
    error make --unspanned {msg: $"contract file ($file) not found", code: "raibid::contract_missing",
      help: "run the script from a raibid-ci checkout (or set RAIBID_ROOT to one)"}
  }
  open --raw $file | parse-contract
}

# The job statuses, in lifecycle order, from their one definition: the `Status` enum of
# rust/raibid-core/src/job.rs (serde `snake_case` names, as the API and the records spell them).
@example "the first two" { job-statuses | first 2 } --result [queued running]
export def job-statuses []: nothing -> list<string> {
  let file = (repo-root | path join rust raibid-core src job.rs)
  let text = (open --raw $file)
  let body = ($text | parse --regex '(?s)pub enum Status \{(?<body>.*?)\n\}' | get 0?.body?)
  if $body == null {
    error make --unspanned {msg: $"no `pub enum Status` in ($file)", code: "raibid::contract_missing"}
  }
  $body | lines | str trim | where {|l| $l =~ '^[A-Z][A-Za-z]*,$' }
  | each {|l| $l | str trim --right --char ',' | str snake-case }
}
