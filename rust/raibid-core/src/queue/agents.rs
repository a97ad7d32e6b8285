//! Agents: heartbeats (a hash per agent that expires when they stop), the set of known agents.

use super::{ts_string, AgentInfo, Queue, Result};
use crate::contract::{self, keys};
use chrono::Utc;
use redis::streams::StreamPendingCountReply;
use std::collections::HashMap;
use std::time::Duration;

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
        for route in crate::contract::kinds::ALL {
            let pending: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
                .arg(route.stream)
                .arg(route.group)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(agent)
                .query_async(&mut con)
                .await;
            if matches!(&pending, Ok(p) if p.ids.is_empty()) {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(route.stream)
                    .arg(route.group)
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
