//! The read-only MCP tool `list_schedules` (issue 22 §3): the schedules with their next run and last
//! result, as `GET /api/v1/schedules` shows them, bounded by the answer budget. Schedules are managed
//! through the REST API and `raibid.nu schedule`, not through MCP.

use super::budget::{self, keep_share, one_line, Fit};
use super::tools::Raibid;
use chrono::{DateTime, Utc};
use raibid_core::job::Status;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;

/// A schedule in the `list_schedules` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ScheduleSummary {
    /// Schedule id.
    pub id: String,
    /// Clone URL.
    pub repo_url: String,
    /// Full ref.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone of the expression.
    pub timezone: String,
    /// Pipeline variant (variables every step sees).
    pub env: BTreeMap<String, String>,
    /// Paused.
    pub paused: bool,
    /// Skips due times whose commit it already built successfully.
    pub skip_unchanged: bool,
    /// Next due time (none while paused).
    pub next_run: Option<DateTime<Utc>>,
    /// Last job it made (get_job has it).
    pub last_job: Option<String>,
    /// That job's status.
    pub last_status: Option<Status>,
}

/// `list_schedules` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ScheduleAnswer {
    /// Schedules, oldest first.
    pub schedules: Vec<ScheduleSummary>,
    /// Schedules in all.
    pub total: u64,
    /// What the answer budget left out.
    pub cut: Option<String>,
}

impl Fit for ScheduleAnswer {
    /// Degradation: the list is shortened (oldest schedules kept).
    fn degrade(&mut self, ratio: f64) -> bool {
        let n = self.schedules.len();
        if n <= 1 {
            return false;
        }
        let k = keep_share(n, ratio, 1);
        self.schedules.truncate(k);
        self.cut = Some(format!(
            "{k} of {} schedules shown (answer budget); GET /api/v1/schedules lists all",
            self.total
        ));
        true
    }
}

#[tool_router(router = schedule_router, vis = "pub(crate)")]
impl Raibid {
    #[tool(
        name = "list_schedules",
        description = "Scheduled builds: each schedule's repository, ref, cron expression and time zone, pipeline variant (env), paused flag, next run and last job with its status. Read-only; schedules are managed with the REST API or `raibid.nu schedule`.",
        annotations(read_only_hint = true)
    )]
    async fn list_schedules(&self) -> Result<Json<ScheduleAnswer>, String> {
        let list = crate::schedules::list(self.state()).await.map_err(|e| {
            format!("the schedule store is unavailable; retry in a few seconds ({e})")
        })?;
        let schedules: Vec<ScheduleSummary> = list
            .schedules
            .into_iter()
            .map(|v| ScheduleSummary {
                id: v.schedule.id,
                repo_url: one_line(&v.schedule.repo_url, 500),
                git_ref: one_line(&v.schedule.git_ref, 300),
                cron: v.schedule.cron,
                timezone: v.schedule.timezone,
                env: v
                    .schedule
                    .env
                    .into_iter()
                    .map(|(k, val)| (k, one_line(&val, 200)))
                    .collect(),
                paused: v.paused,
                skip_unchanged: v.schedule.skip_unchanged,
                next_run: v.next_run,
                last_job: v.last_job,
                last_status: v.last_status,
            })
            .collect();
        budget::fit(ScheduleAnswer {
            total: schedules.len() as u64,
            schedules,
            cut: None,
        })
    }
}

/// The schedule tools, merged into the server's router.
pub(crate) fn router() -> ToolRouter<Raibid> {
    Raibid::schedule_router()
}
