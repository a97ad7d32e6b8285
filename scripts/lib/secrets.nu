# Secrets for the scripts: read from `<NAME>`, else the file `<NAME>_FILE` names, else the owner's copy in
# RAIBID_CONFIG_DIR (written by bootstrap, mode 0600). Values are returned, never printed or logged.

use errors.nu [fail]

# File name of a secret's copy in RAIBID_CONFIG_DIR: RAIBID_API_TOKEN → api-token.
@example "config file name" { config-file-name RAIBID_GITEA_WEBHOOK_SECRET } --result "gitea-webhook-secret"
export def config-file-name [name: string]: nothing -> string {
  $name | str replace --regex '^RAIBID_' '' | str lowercase | str replace --all '_' '-'
}

# Resolve a secret, or null when it is set nowhere.
export def secret-or-null [
  name: string  # the env var, e.g. RAIBID_GITEA_TOKEN (its *_FILE twin is tried next)
]: nothing -> any {
  let direct = ($env | get -o $name)
  if ($direct | is-not-empty) { return ($direct | str trim) }
  let file = ($env | get -o $"($name)_FILE")
  if ($file | is-not-empty) {
    if not ($file | path exists) {
      fail secret_file_missing $"($name)_FILE points to ($file), which does not exist" --hint $"create it or unset ($name)_FILE"
    }
    return (open --raw $file | str trim)
  }
  let dir = ($env.RAIBID_CONFIG_DIR? | default "")
  let copy = ($dir | path join (config-file-name $name))
  if ($dir | is-not-empty) and ($copy | path exists) { return (open --raw $copy | str trim) }
  null
}

# Resolve a secret; fail with a hint naming every place it could come from.
export def secret [
  name: string        # the env var, e.g. RAIBID_GITEA_TOKEN
  --purpose: string = ""  # what it is for, shown in the error
]: nothing -> string {
  let v = (secret-or-null $name)
  if $v == null {
    let copy = ($env.RAIBID_CONFIG_DIR? | default "~/.config/raibid" | path join (config-file-name $name))
    let why = if ($purpose | is-empty) { "" } else { $" \(needed for ($purpose)\)" }
    fail secret_missing $"($name) is not set($why)" --hint $"set ($name), or ($name)_FILE to a file holding it, or write it to ($copy) \(bootstrap does\)"
  }
  $v
}

# Replace every occurrence of the given secret values in a text (for logs and dry-run output).
export def redact [...values: any]: string -> string {
  let text = $in
  $values | where {|v| ($v | describe) == "string" and ($v | str length) >= 4 }
  | reduce --fold $text {|v, acc| $acc | str replace --all $v "<redacted>" }
}

# Write a secret to the owner's config dir with mode 0600 (never overwrites unless `--force`).
export def write-config-secret [
  name: string   # env var name of the secret
  value: string  # the value
  --force        # overwrite an existing copy
]: nothing -> path {
  let dir = $env.RAIBID_CONFIG_DIR
  mkdir $dir
  ^chmod 700 $dir
  let file = ($dir | path join (config-file-name $name))
  if ($file | path exists) and not $force { return $file }
  # Create the file with mode 0600 before the value lands in it.
  "" | save --force $file
  ^chmod 600 $file
  $value | save --force $file
  $file
}
