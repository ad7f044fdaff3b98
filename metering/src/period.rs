//! Usage windows: the free tier counts per calendar month (UTC); paid tiers (`pro`, `team`) per
//! billing period starting at the billing anchor, the day the user got the tier.
//!
//! Anchors have day granularity: a period starts at 00:00 UTC on the anchor's day of the month
//! (clamped to the month's last day: an anchor on the 31st starts February's period on the 28th
//! or 29th, and March's on the 31st again), because usage is stored per UTC day. Each period is
//! computed from the anchor itself, so clamping never drifts.

use clawdeploy_config::Tier;
use clawdeploy_store::time::{civil_from_days, days_from_civil, DAY_MS};

/// A half-open window `[start_ms, end_ms)` of unix milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    /// First millisecond of the window (00:00 UTC of its first day), included.
    pub start_ms: i64,
    /// First millisecond after the window (the next window's start), excluded.
    pub end_ms: i64,
}

/// How an instance's usage is windowed: by its owner's billing anchor, or by calendar month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// `Some` only for paid tiers with an anchor.
    anchor_ms: Option<i64>,
}

impl Plan {
    /// The plan of an instance of `tier` whose owner's billing anchor is `anchor_ms`.
    pub fn new(tier: Tier, anchor_ms: Option<i64>) -> Self {
        Self {
            anchor_ms: anchor_ms.filter(|_| tier.is_paid()),
        }
    }

    /// Calendar months (the free tier).
    pub const CALENDAR: Plan = Plan { anchor_ms: None };

    /// The window containing `now_ms`.
    pub fn period(&self, now_ms: i64) -> Period {
        match self.anchor_ms {
            Some(anchor) => anchored_period(anchor, now_ms),
            None => calendar_month(now_ms),
        }
    }
}

/// Days in `month` (1–12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    let next = if month == 12 {
        days_from_civil(year + 1, 1, 1)
    } else {
        days_from_civil(year, month + 1, 1)
    };
    (next - days_from_civil(year, month, 1)) as u32
}

/// Start (ms) of month number `index` (`year * 12 + month - 1`) on day `day`, clamped.
fn month_day_ms(index: i64, day: u32) -> i64 {
    let (year, month) = (index.div_euclid(12), (index.rem_euclid(12) + 1) as u32);
    days_from_civil(year, month, day.min(days_in_month(year, month))) * DAY_MS
}

fn month_index_of(ms: i64) -> (i64, u32) {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    (y * 12 + i64::from(m) - 1, d)
}

/// The calendar month (UTC) containing `now_ms`.
pub fn calendar_month(now_ms: i64) -> Period {
    let (index, _) = month_index_of(now_ms);
    Period {
        start_ms: month_day_ms(index, 1),
        end_ms: month_day_ms(index + 1, 1),
    }
}

/// The billing period containing `now_ms` for an anchor at `anchor_ms` (day granularity).
pub fn anchored_period(anchor_ms: i64, now_ms: i64) -> Period {
    let (anchor_index, anchor_day) = month_index_of(anchor_ms);
    let (now_index, _) = month_index_of(now_ms);
    let mut k = now_index - anchor_index;
    if now_ms < month_day_ms(anchor_index + k, anchor_day) {
        k -= 1;
    }
    Period {
        start_ms: month_day_ms(anchor_index + k, anchor_day),
        end_ms: month_day_ms(anchor_index + k + 1, anchor_day),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawdeploy_store::time::rfc3339;

    fn at(y: i64, m: u32, d: u32, hour: i64) -> i64 {
        days_from_civil(y, m, d) * DAY_MS + hour * 3_600_000
    }

    fn show(p: Period) -> (String, String) {
        (rfc3339(p.start_ms), rfc3339(p.end_ms))
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (format!("{a}T00:00:00.000Z"), format!("{b}T00:00:00.000Z"))
    }

    #[test]
    fn calendar_months_at_year_ends_and_in_leap_years() {
        assert_eq!(
            show(calendar_month(at(2026, 12, 31, 23))),
            pair("2026-12-01", "2027-01-01")
        );
        assert_eq!(
            show(calendar_month(at(2028, 2, 29, 12))),
            pair("2028-02-01", "2028-03-01")
        );
        assert_eq!(
            show(calendar_month(at(2027, 1, 1, 0))),
            pair("2027-01-01", "2027-02-01")
        );
    }

    #[test]
    fn days_in_month_knows_leap_years() {
        assert_eq!(days_in_month(2028, 2), 29);
        assert_eq!(days_in_month(2027, 2), 28);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2026, 4), 30);
        assert_eq!(days_in_month(2026, 12), 31);
    }

    #[test]
    fn anchored_periods_clamp_to_short_months_without_drifting() {
        // Anchored on Jan 31 at 15:00: periods start at 00:00 on the 31st, or the month's end.
        let anchor = at(2027, 1, 31, 15);
        assert_eq!(
            show(anchored_period(anchor, at(2027, 1, 31, 16))),
            pair("2027-01-31", "2027-02-28")
        );
        // The anchor day itself belongs to the first period from midnight on.
        assert_eq!(
            show(anchored_period(anchor, at(2027, 1, 31, 0))),
            pair("2027-01-31", "2027-02-28")
        );
        assert_eq!(
            show(anchored_period(anchor, at(2027, 2, 27, 23))),
            pair("2027-01-31", "2027-02-28")
        );
        assert_eq!(
            show(anchored_period(anchor, at(2027, 2, 28, 0))),
            pair("2027-02-28", "2027-03-31")
        );
        assert_eq!(
            show(anchored_period(anchor, at(2027, 3, 30, 23))),
            pair("2027-02-28", "2027-03-31")
        );
        assert_eq!(
            show(anchored_period(anchor, at(2027, 4, 15, 0))),
            pair("2027-03-31", "2027-04-30")
        );
        // A leap year's February.
        let leap = at(2028, 1, 30, 9);
        assert_eq!(
            show(anchored_period(leap, at(2028, 2, 29, 1))),
            pair("2028-02-29", "2028-03-30")
        );
        assert_eq!(
            show(anchored_period(leap, at(2028, 2, 28, 1))),
            pair("2028-01-30", "2028-02-29")
        );
        // Across a year end.
        let dec = at(2026, 12, 15, 8);
        assert_eq!(
            show(anchored_period(dec, at(2027, 1, 14, 23))),
            pair("2026-12-15", "2027-01-15")
        );
        assert_eq!(
            show(anchored_period(dec, at(2027, 1, 15, 0))),
            pair("2027-01-15", "2027-02-15")
        );
        // Years later, still on the anchor's day.
        assert_eq!(
            show(anchored_period(anchor, at(2030, 7, 31, 0))),
            pair("2030-07-31", "2030-08-31")
        );
    }

    #[test]
    fn only_paid_tiers_with_an_anchor_use_it() {
        let anchor = Some(at(2027, 1, 20, 0));
        let now = at(2027, 2, 5, 0);
        assert_eq!(
            show(Plan::new(Tier::Free, anchor).period(now)),
            pair("2027-02-01", "2027-03-01")
        );
        assert_eq!(
            show(Plan::new(Tier::Pro, None).period(now)),
            pair("2027-02-01", "2027-03-01")
        );
        assert_eq!(
            show(Plan::new(Tier::Team, anchor).period(now)),
            pair("2027-01-20", "2027-02-20")
        );
    }
}
