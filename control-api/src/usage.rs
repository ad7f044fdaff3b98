//! `GET /api/usage?from=&to=`: the daily usage series of the caller's instance, for analytics.

use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use clawdeploy_store::time::{civil_from_days, days_from_civil, now_ms, DAY_MS};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::{ApiState, Reply};

/// The longest series one request returns.
const MAX_DAYS: i64 = 366;

/// The query of `GET /api/usage`: `from` and `to`, UTC days as `YYYY-MM-DD`, both included.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// `YYYY-MM-DD` to days since 1970-01-01, if it is a real date.
fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s[0..4].parse().ok()?;
    let m: u32 = s[5..7].parse().ok()?;
    let d: u32 = s[8..10].parse().ok()?;
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

fn day_text(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One UTC day of usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Messages counted that day.
    pub messages: i64,
    /// LLM tokens counted that day.
    pub tokens: i64,
}

/// The daily usage series of the caller's instance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSeries {
    /// The instance counted.
    pub instance_id: Uuid,
    /// The first day (`YYYY-MM-DD`).
    pub from: String,
    /// The last day (`YYYY-MM-DD`).
    pub to: String,
    /// Every day from `from` to `to`, oldest first.
    pub days: Vec<UsageDay>,
    /// When the current billing period began (RFC 3339).
    pub period_start: String,
    /// When it ends (RFC 3339).
    pub resets_at: String,
}

/// `GET /api/usage`: the caller's instance's messages and tokens per UTC day, oldest first, from
/// `from` (default: the first of this month) to `to` (default: today), at most 366 days; today
/// includes counts the meter has not flushed yet. Also the current billing period.
pub async fn series(
    State(state): State<ApiState>,
    auth: AuthUser,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Reply<UsageSeries>, ApiError> {
    let Query(q) = query?;
    let today = now_ms().div_euclid(DAY_MS);
    let (y, m, _) = civil_from_days(today);
    let parse = |field: &str, value: Option<&String>, default: i64| match value {
        None => Ok(default),
        Some(v) => parse_day(v).ok_or_else(|| {
            ApiError::invalid(
                field,
                "INVALID_DATE",
                format!(
                    "{field}: {v:?} is not a date; use YYYY-MM-DD, e.g. {}",
                    day_text(today)
                ),
            )
        }),
    };
    let from = parse("from", q.from.as_ref(), days_from_civil(y, m, 1))?;
    let to = parse("to", q.to.as_ref(), today)?;
    if from > to || to - from >= MAX_DAYS {
        return Err(ApiError::invalid(
            "from",
            "INVALID_RANGE",
            format!("from must not be after to, and the range at most {MAX_DAYS} days"),
        ));
    }
    let inst = crate::instances::my_instance(&state, &auth).await?;
    let period = clawdeploy_metering::Plan::new(inst.tier, inst.billing_anchor_at).period(now_ms());
    let stored = state
        .store
        .usage_days(inst.id, &day_text(from), &day_text(to))
        .await?;
    // Today's counts not yet flushed are in the meter only.
    let (unflushed_messages, unflushed_tokens) = state.ctx.meter.as_ref().map_or((0, 0), |m| {
        m.unflushed_since(&inst.id.to_string(), today * DAY_MS)
    });
    let mut days = Vec::new();
    for day in from..=to {
        let key = day_text(day);
        let (mut messages, mut tokens) = stored
            .iter()
            .find(|d| d.day == key)
            .map_or((0, 0), |d| (d.messages, d.tokens));
        if day == today {
            messages += i64::try_from(unflushed_messages).unwrap_or(0);
            tokens += i64::try_from(unflushed_tokens).unwrap_or(0);
        }
        days.push(UsageDay {
            day: key,
            messages,
            tokens,
        });
    }
    Ok(Reply(UsageSeries {
        instance_id: inst.id,
        from: day_text(from),
        to: day_text(to),
        days,
        period_start: clawdeploy_store::time::rfc3339(period.start_ms),
        resets_at: clawdeploy_store::time::rfc3339(period.end_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_only_when_real() {
        assert_eq!(parse_day("1970-01-02"), Some(1));
        assert_eq!(day_text(parse_day("2026-11-27").unwrap()), "2026-11-27");
        assert_eq!(parse_day("2026-02-30"), None);
        assert_eq!(parse_day("2026-1-5"), None);
        assert_eq!(parse_day("yesterday"), None);
    }
}
