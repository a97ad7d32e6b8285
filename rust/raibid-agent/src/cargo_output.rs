//! Cargo JSON messages in a job's output: the log flusher hands every batch through [`CargoOutput::rewrite`]
//! (compiler messages become their rendered lines, machine-only messages disappear), and once the job's
//! output is complete [`CargoOutput::store`] writes the structured diagnostics to
//! `raibid:job:{id}:diagnostics` (same retention as the log) and returns the unit counts for the record.
//! This is the one parse of each line: the same counts feed the job's cache figures ([`CargoOutput::units`]).

use crate::masking::Masker;
use raibid_core::cargo_messages::{CargoUnits, Collector, LineOutcome};
use raibid_core::contract;
use raibid_core::queue::{Queue, StampedLine};

/// The diagnostics of one job, collected from its log lines.
#[derive(Default)]
pub(crate) struct CargoOutput {
    collector: Collector,
}

impl CargoOutput {
    /// Rewrite a batch of `(read at, (step, stream, line))` in place (a replacement keeps the time of
    /// the line it replaces).
    pub(crate) fn rewrite(&mut self, batch: &mut Vec<StampedLine>) {
        // Fast path: nothing that looks like a cargo message and no libtest section to watch is cheap
        // to pass through, but libtest needs every stdout line, so every line goes to the collector.
        let mut out = Vec::with_capacity(batch.len());
        for (at, (step, stream, line)) in batch.drain(..) {
            match self.collector.line(&step, &stream, &line) {
                LineOutcome::Keep => out.push((at, (step, stream, line))),
                LineOutcome::Drop => {}
                LineOutcome::Replace(lines) => {
                    for l in lines {
                        out.push((at, (step.clone(), "stderr".to_string(), l)));
                    }
                }
            }
        }
        *batch = out;
    }

    /// Distinct compilation units so far (fresh / total), `None` when cargo reported none.
    pub(crate) fn units(&self) -> Option<CargoUnits> {
        self.collector.units()
    }

    /// Store the diagnostics (secrets masked) when any step produced some; return the unit counts.
    pub(crate) async fn store(
        self,
        queue: &Queue,
        job_id: &str,
        masker: &Masker,
    ) -> Option<CargoUnits> {
        let (diags, units) = self.collector.finish();
        if !diags.cargo_json_seen && diags.tests.is_empty() {
            return units;
        }
        let json = match serde_json::to_string(&diags) {
            Ok(j) => masker.mask(&j),
            Err(_) => return units,
        };
        let mut con = queue.redis();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(contract::job_diagnostics_key(job_id))
            .arg(json)
            .arg("EX")
            .arg(queue.config().retention.as_secs().max(1))
            .query_async(&mut con)
            .await;
        if let Err(e) = r {
            tracing::warn!(job = %job_id, error = %e, "could not store diagnostics");
        }
        units
    }
}
