# One HTTP helper for the Gitea, GitHub and dispatcher clients: JSON in, {status, headers, body} out,
# headers as a record with lower-case names. Connection failures become `unreachable` errors with a hint;
# HTTP error statuses are returned, so each client maps them to its own messages.

use errors.nu [fail]

# Turn the header table of `http … --full` into a record with lower-case names (last value wins).
export def header-record []: table -> record {
  $in | reduce --fold {} {|h, acc| $acc | upsert ($h.name | str lowercase) $h.value }
}

# Send one request.
@example "GET a JSON document" { request GET https://api.github.com/zen --service GitHub }
export def request [
  method: string                  # GET, POST, PATCH, PUT or DELETE
  url: string                     # absolute URL
  --headers: record = {}          # request headers
  --body: any = null              # JSON body (record or list); null for none
  --service: string = "server"    # what is called, for error messages
  --hint: string = ""             # what to do when the server cannot be reached
  --timeout: duration = 30sec     # give up after this long
]: nothing -> record {
  let m = ($method | str uppercase)
  let res = try {
    if $m in [POST PATCH PUT] and $body == null {
      # No body: no Content-Type and zero bytes (with a JSON content type Nushell would send `""`).
      match $m {
        "POST" => { http post --full --allow-errors --max-time $timeout --headers $headers $url "" }
        "PATCH" => { http patch --full --allow-errors --max-time $timeout --headers $headers $url "" }
        _ => { http put --full --allow-errors --max-time $timeout --headers $headers $url "" }
      }
    } else {
      match $m {
        "GET" => { http get --full --allow-errors --max-time $timeout --headers $headers $url }
        "DELETE" => { http delete --full --allow-errors --max-time $timeout --headers $headers $url }
        "POST" => { http post --full --allow-errors --max-time $timeout --headers $headers --content-type application/json $url $body }
        "PATCH" => { http patch --full --allow-errors --max-time $timeout --headers $headers --content-type application/json $url $body }
        "PUT" => { http put --full --allow-errors --max-time $timeout --headers $headers --content-type application/json $url $body }
        _ => { fail bad_method $"unsupported HTTP method ($method)" }
      }
    }
  } catch {|e|
    if ($e.details?.code? | default "" | str starts-with "raibid::") { return $e.raw }
    fail unreachable $"cannot reach ($service) at ($url | url parse | $'($in.scheme)://($in.host):($in.port)'): ($e.msg)" --hint $hint
  }
  {
    status: $res.status
    headers: ($res.headers.response | header-record)
    body: $res.body
  }
}

# Parse an RFC 8288 Link header into a record {rel: url}.
@example "GitHub pagination" { '<https://api.github.com/orgs/a/repos?page=2>; rel="next", <https://api.github.com/orgs/a/repos?page=5>; rel="last"' | parse-link-header } --result {next: "https://api.github.com/orgs/a/repos?page=2", last: "https://api.github.com/orgs/a/repos?page=5"}
export def parse-link-header []: any -> record {
  let text = ($in | default "")
  $text | split row ","
  | each {|part| $part | parse --regex '<(?<url>[^>]+)>\s*;\s*rel="(?<rel>[^"]+)"' }
  | flatten
  | reduce --fold {} {|l, acc| $acc | upsert $l.rel $l.url }
}
