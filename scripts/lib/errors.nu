# One error helper for every raibid-ci script.
#
# Errors carry a snake_case code (shown as `raibid::<code>`), a message that says what went wrong and a hint
# that says what to do. Callers catch them with `try { … } catch {|e| $e.details.code }`.

# Raise a raibid-ci error.
@example "fail with a hint" { fail missing_tool "sops is not installed" --hint "apt-get install sops" }
export def fail [
  code: string          # snake_case error code, e.g. `missing_tool`
  message: string       # what went wrong, one sentence
  --hint: string = ""   # what to do about it (shown as `help:`)
  --span: any = null    # span of the offending argument: `(metadata $arg).span`
]: nothing -> any {
  if ($code !~ '^[a-z][a-z0-9]*(_[a-z0-9]+)*$') {
    error make {msg: $"error code '($code)' is not snake_case", code: "raibid::bad_error_code"}
  }
  let err = {msg: $message, code: $"raibid::($code)"}
    | merge (if ($hint | is-empty) { {} } else { {help: $hint} })
  if $span == null {
    error make --unspanned $err
  } else {
    error make ($err | merge {labels: [{text: $code, span: $span}]})
  }
}

# The snake_case code of a caught error (`null` for errors not raised by `fail`).
# Errors raised inside closures (`each`, `where`) arrive wrapped; the innermost raibid code wins.
export def error-code []: record -> any {
  let e = $in
  let details = ($e.details? | default $e)
  let inner = ($details.inner? | default [] | each {|i| $i | error-code } | compact)
  if ($inner | is-not-empty) { return ($inner | first) }
  let code = ($details.code? | default "")
  if ($code | str starts-with "raibid::") { $code | str substring 8.. } else { null }
}

# Run an external command given as an argv list; on failure raise `code` with its stderr and `hint`.
# Returns stdout. Arguments are passed as argv, never through a shell.
export def run-argv [
  argv: list<string>      # program and arguments
  --code: string = "command_failed"  # error code on a non-zero exit
  --hint: string = ""     # what to do when it fails
  --stdin: any = null     # data piped to the command
]: nothing -> string {
  let res = try {
    if $stdin == null {
      do { ^($argv | first) ...($argv | skip 1) } | complete
    } else {
      $stdin | do { ^($argv | first) ...($argv | skip 1) } | complete
    }
  } catch {|e|
    fail $code $"could not run `($argv | first)`: ($e.msg)" --hint $hint
  }
  if $res.exit_code != 0 {
    let err = ($res.stderr | str trim | lines | last 5 | str join "\n")
    fail $code $"`($argv | str join ' ')` exited with ($res.exit_code): ($err)" --hint $hint
  }
  $res.stdout
}

# True when the caught error `e` is a Ctrl-C: Nushell's own interrupt, or an external command ended by
# SIGINT or exiting 130 (also when wrapped by a closure). Commands turn it into one line instead of a trace.
export def interrupted [e: record]: nothing -> bool {
  let d = ($e.details? | default $e)
  let dbg = ($e.debug? | default "")
  if ($dbg | str starts-with "Interrupted") or ($d.msg? == "Operation interrupted") { return true }
  if ($d.code? == "nu::shell::terminated_by_signal") and ($dbg | str contains "SIGINT") { return true }
  # A shell script (sh) whose child died of SIGINT exits 130 rather than by the signal.
  if ($e.exit_code? == 130) { return true }
  ($d.inner? | default [] | any {|i| interrupted $i })
}
