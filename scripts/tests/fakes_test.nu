# The fakes themselves: they must reject what the real APIs would reject, or the other tests prove nothing.

use std/assert
use std/testing *
use helpers.nu *

def gitea-post [srv: record, path: string, body: any, --token: string = "t0k"] {
  http post --full --allow-errors --content-type application/json --headers {Authorization: $"token ($token)"} $"($srv.url)/api/v1($path)" ($body | to json)
}

@test
def fake_gitea_checks_calls_against_the_swagger_file [] {
  with-fakes {gitea: {users: {raibid: {token: "t0k", password: "pw", is_admin: true}}}} {|f|
    gitea-post $f.gitea "/repos/migrate" {clone_addr: "https://github.com/a/b.git", mirror: "yes", colour: 1} | ignore
    gitea-post $f.gitea "/repos/a/b/hooks" {type: "gitea", config: {url: "http://x"}} | ignore
    gitea-post $f.gitea "/repos/a/b/hooks" {type: "jenkins", config: {url: "http://x", content_type: "json"}} | ignore
    http get --full --allow-errors --headers {Authorization: "token t0k"} $"($f.gitea.url)/api/v1/repos/a/b/hooks?per_page=5" | ignore
    http put --full --allow-errors --headers {Authorization: "token t0k"} $"($f.gitea.url)/api/v1/repos/a/b/mirror-sync" "" | ignore
    http get --full --allow-errors $"($f.gitea.url)/api/v1/repos/a/b/webhooks" | ignore
    let v = (fake-get $f.gitea violations)
    for expected in [
      "body.repo_name is required"
      "body.mirror should be a boolean"
      "body.colour is not a documented property"
      "body.config.content_type is required"
      "body.type='jenkins' not one of"
      "query parameter per_page is not documented"
      "PUT is not documented for /repos/{owner}/{repo}/mirror-sync"
      "path /api/v1/repos/a/b/webhooks is not in the API document"
    ] {
      assert ($v | any {|l| $l | str contains $expected }) $"no violation '($expected)' in:\n($v | str join "\n")"
    }
  }
}

@test
def fake_gitea_requires_authentication_like_gitea [] {
  with-fakes {gitea: {users: {raibid: {token: "t0k", password: "pw", is_admin: true}}}} {|f|
    let anon = (http get --full --allow-errors $"($f.gitea.url)/api/v1/user")
    assert equal $anon.status 401
    let bad = (http get --full --allow-errors --headers {Authorization: "token nope"} $"($f.gitea.url)/api/v1/user")
    assert equal $bad.status 401
    let basic = (http get --full --allow-errors --user raibid --password pw $"($f.gitea.url)/api/v1/user")
    assert equal $basic.body.login raibid
    assert-no-violations $f.gitea
  }
}

@test
def fake_github_checks_headers_bodies_and_paginates_with_link [] {
  let repos = (1..5 | each {|i| {id: $i, name: $"r($i)", full_name: $"acme/r($i)", owner: {login: acme}, private: false, clone_url: ""} }
    | reduce --fold {} {|r, acc| $acc | insert $r.full_name $r })
  with-fakes {github: {accounts: {acme: {type: Organization}}, token: "gh", viewer: "me", repos: $repos}} {|f|
    let h = {Accept: "application/vnd.github+json", X-GitHub-Api-Version: "2022-11-28", User-Agent: "t"}
    let p1 = (http get --full --headers $h $"($f.github.url)/orgs/acme/repos?per_page=2")
    assert equal ($p1.body | length) 2
    let hdr = ($p1.headers.response | reduce --fold {} {|x, acc| $acc | upsert $x.name $x.value })
    assert ($hdr.link | str contains 'rel="next"')
    assert ($hdr.link | str contains 'page=3')
    for k in [x-ratelimit-limit x-ratelimit-remaining x-ratelimit-reset x-ratelimit-used x-ratelimit-resource] {
      assert ($k in $hdr) $"missing ($k)"
    }
    assert-no-violations $f.github
    http get --full --allow-errors $"($f.github.url)/orgs/acme/repos?per_page=500" | ignore
    http post --full --allow-errors --content-type application/json --headers ($h | insert Authorization "Bearer gh") $"($f.github.url)/repos/acme/r1/hooks" ({name: "web", config: {content_type: "json"}, events: "push"} | to json) | ignore
    let v = (fake-get $f.github violations)
    for expected in ["Accept should be application/vnd.github+json" "X-GitHub-Api-Version should be" "per_page=500" "body.config.url is required" "body.events must be an array"] {
      assert ($v | any {|l| $l | str contains $expected }) $"no violation '($expected)' in:\n($v | str join "\n")"
    }
  }
}
