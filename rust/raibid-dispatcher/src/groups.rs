//! Matrix groups through REST (issue 23 §1): `GET /api/v1/groups` (newest first), `GET
//! /api/v1/groups/{id}` (the group with its cells and combined status), `POST .../cancel` (every cell
//! not final, then the group) and `POST .../retry` (the whole group again: a new push job that fans out
//! anew; one cell is retried with `POST /api/v1/jobs/{cell}/retry`, which replaces it in its group).

use crate::guard::ApiError;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use raibid_core::job::is_valid_job_id;
use raibid_core::matrix::GroupView;
use raibid_core::queue::QueueError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The group routes (under the API prefix, behind the token).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/groups", get(list))
        .route("/groups/{id}", get(show))
        .route("/groups/{id}/cancel", post(cancel))
        .route("/groups/{id}/retry", post(retry))
}

/// A page of groups (`GET /api/v1/groups`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct GroupPage {
    /// Groups, newest first.
    pub groups: Vec<GroupView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

fn not_a_group(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("group {id} not found (a group is the job a matrix push fanned out from)"),
    )
}

/// A group by id: 404 naming it when there is none.
pub async fn load(state: &AppState, id: &str) -> Result<GroupView, ApiError> {
    if !is_valid_job_id(id) {
        return Err(not_a_group(id));
    }
    match state.queue.group(id).await {
        Ok(v) => Ok(v),
        Err(QueueError::NotFound(_)) => Err(not_a_group(id)),
        Err(e) => Err(e.into()),
    }
}

/// Groups, newest first.
pub async fn page(
    state: &AppState,
    limit: u32,
    cursor: Option<&str>,
) -> Result<GroupPage, ApiError> {
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "limit: must be between 1 and 100",
        ));
    }
    if cursor.is_some_and(|c| !is_valid_job_id(c)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "cursor: not a cursor returned by this API",
        ));
    }
    let ids = state.queue.list_groups(limit as usize + 1, cursor).await?;
    let more = ids.len() > limit as usize;
    let mut groups = Vec::new();
    for id in ids.iter().take(limit as usize) {
        match state.queue.group(id).await {
            Ok(v) => groups.push(v),
            Err(QueueError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let next_cursor = if more {
        ids.get(limit as usize - 1).cloned()
    } else {
        None
    };
    Ok(GroupPage {
        groups,
        next_cursor,
    })
}

async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<GroupPage>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    Ok(Json(
        page(&state, q.limit.unwrap_or(20), q.cursor.as_deref()).await?,
    ))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(load(&state, &id).await?))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    load(&state, &id).await?;
    state.queue.cancel(&id).await?;
    let v = load(&state, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    load(&state, &id).await?;
    let job = crate::requests::retry(&state, &id)
        .await?
        .map_err(|r| match r {
            crate::requests::Refused::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            crate::requests::Refused::Unprocessable(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m)
            }
        })?;
    Ok((StatusCode::CREATED, Json(job.public())).into_response())
}
