//! The subscription tiers (PRD §3.6.1): one typed value wherever a tier is compared, stored or
//! shown, so that no code path can fall back to a tier silently.

use serde::{Deserialize, Serialize};

/// A subscription tier. Spelled in lower case wherever it is stored or shown (`free`, `pro`,
/// `team`); quotas per tier are configured in `[tiers.<tier>]`.
/// Ordered cheapest first (an upgrade is a move to a greater tier).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The default for every new account: one instance, monthly quotas.
    #[default]
    Free,
    /// Paid, one instance, billed per period from its subscription's anchor.
    Pro,
    /// Paid, several instances per account, billed like pro.
    Team,
}

impl Tier {
    /// Every tier, cheapest first.
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Pro, Tier::Team];

    /// The tier's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Team => "team",
        }
    }

    /// Paid tiers count their periods from the subscription's billing anchor; free counts
    /// calendar months.
    pub fn is_paid(self) -> bool {
        matches!(self, Tier::Pro | Tier::Team)
    }

    /// Whether an account on this tier may have only one instance.
    pub fn one_instance(self) -> bool {
        matches!(self, Tier::Free | Tier::Pro)
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier name that is none of `free`, `pro`, `team`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?}: expected free, pro or team")]
pub struct UnknownTier(pub String);

impl std::str::FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            assert_eq!(serde_json::to_string(&tier).unwrap(), format!("\"{tier}\""));
        }
        for bad in ["", "Free", "PRO", "enterprise", " free"] {
            assert_eq!(bad.parse::<Tier>(), Err(UnknownTier(bad.to_string())));
        }
    }
}
