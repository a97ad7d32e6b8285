//! Agents: heartbeats (a hash per agent that expires when they stop), the set of known agents.

use super::{ts_string, AgentInfo, Queue, Result};
use crate::contract::{self, keys};
use chrono::Utc;
use redis::streams::StreamPendingCountReply;
use std::collections::HashMap;
use std::time::Duration;

/// An agent's heartbeat on its node (Redis clock, like the enqueue script that reads it): the agent's
/// expiry in the node's agents set, the node's in the set of nodes; expired agents dropped.
/// KEYS: nodes, node agents   ARGV: node, agent, ttl ms
const NODE_BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], exp, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local cur = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if exp > cur then redis.call('ZADD', KEYS[1], exp, ARGV[1]) end
return 1";

/// A repository's warm cache on a node: scored by now (Redis clock); records past the TTL dropped.
/// KEYS: node repos   ARGV: repo key, ttl ms
const WARM_REPO: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1";

impl Queue {
    /// Record an agent heartbeat: `current` is (job id, entry id) of the job it runs (the claim's lease
    /// is renewed separately, fenced, by `renew_lease`).
    pub async fn heartbeat(
        &self,
        agent: &str,
        current: Option<(&str, &str)>,
        jobs_done: u64,
        ttl: Duration,
    ) -> Result<()> {
        let mut con = self.con.clone();
        let key = contract::agent_key(agent);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("SADD")
            .arg(keys::AGENTS_SET)
            .arg(agent)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("id")
            .arg(agent)
            .arg("current_job")
            .arg(current.map(|c| c.0).unwrap_or(""))
            .arg("last_heartbeat")
            .arg(ts_string(Utc::now()))
            .arg("jobs_done")
            .arg(jobs_done)
            .arg("kinds")
            .arg(
                self.cfg
                    .kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl.as_secs().max(1))
            .ignore();
        let _: () = p.query_async(&mut con).await?;
        // Only agents that read the node stream (Rust agents with a node name) count as the node's agents.
        if let (Some(node), Some(_)) = (self.cfg.node.as_deref(), self.node_stream()) {
            let _: i64 = redis::Script::new(NODE_BEAT)
                .key(keys::NODES)
                .key(contract::node_agents_key(node))
                .arg(node)
                .arg(agent)
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut con)
                .await?;
        }
        Ok(())
    }

    /// Record that this agent's node holds the warm cache of the repository at `repo_url` (a job of it
    /// finished with a slot here): the enqueue script routes the repository's next jobs to this node
    /// while the record is younger than [`super::ROUTING_TTL`] and the node has a free agent. Nothing
    /// without a node name.
    pub async fn record_warm_repo(&self, repo_url: &str) -> Result<()> {
        let Some(node) = self.cfg.node.as_deref() else {
            return Ok(());
        };
        let mut con = self.con.clone();
        let _: i64 = redis::Script::new(WARM_REPO)
            .key(contract::node_repos_key(node))
            .arg(contract::routing_repo_key(repo_url))
            .arg(super::ROUTING_TTL.as_millis() as u64)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    /// Remove an agent's heartbeat (clean exit). Its consumer is deleted from the group only when it
    /// has nothing pending.
    pub async fn deregister(&self, agent: &str) -> Result<()> {
        let mut con = self.con.clone();
        let _: () = redis::pipe()
            .cmd("SREM")
            .arg(keys::AGENTS_SET)
            .arg(agent)
            .ignore()
            .cmd("DEL")
            .arg(contract::agent_key(agent))
            .ignore()
            .query_async(&mut con)
            .await?;
        let mut streams: Vec<(String, &str)> = crate::contract::kinds::ALL
            .iter()
            .map(|r| (r.stream.to_string(), r.group))
            .collect();
        if let Some(node) = self.cfg.node.as_deref() {
            let _: i64 = redis::cmd("ZREM")
                .arg(contract::node_agents_key(node))
                .arg(agent)
                .query_async(&mut con)
                .await?;
            streams.push((contract::node_jobs_stream(node), keys::AGENTS_GROUP));
        }
        for (stream, group) in &streams {
            let pending: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(agent)
                .query_async(&mut con)
                .await;
            if matches!(&pending, Ok(p) if p.ids.is_empty()) {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(stream)
                    .arg(group)
                    .arg(agent)
                    .query_async(&mut con)
                    .await?;
            }
        }
        Ok(())
    }

    /// Agents with a live heartbeat; stale members of the set are removed.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>> {
        let mut con = self.con.clone();
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::AGENTS_SET)
            .query_async(&mut con)
            .await?;
        let mut out = Vec::new();
        for name in names {
            let m: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(contract::agent_key(&name))
                .query_async(&mut con)
                .await?;
            if m.is_empty() {
                let _: i64 = redis::cmd("SREM")
                    .arg(keys::AGENTS_SET)
                    .arg(&name)
                    .query_async(&mut con)
                    .await?;
                continue;
            }
            out.push(AgentInfo {
                id: name,
                current_job: m.get("current_job").filter(|s| !s.is_empty()).cloned(),
                last_heartbeat: m.get("last_heartbeat").cloned().unwrap_or_default(),
                jobs_done: m.get("jobs_done").and_then(|s| s.parse().ok()).unwrap_or(0),
                kinds: m
                    .get("kinds")
                    .map(|s| {
                        s.split(',')
                            .filter(|k| !k.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Is another live agent using this consumer name?
    pub async fn agent_alive(&self, agent: &str) -> Result<bool> {
        let mut con = self.con.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(contract::agent_key(agent))
            .query_async(&mut con)
            .await?;
        Ok(n > 0)
    }
}
