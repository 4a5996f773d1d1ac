//! The batch budget: a cap on what all of a batch's sessions may cost,
//! enforced like a lease (contract 9, docs/contracts.md).
//!
//! Each order carries the batch's cap and the reservation its session takes
//! at dispatch; the lease script ([`crate::scripts::ACQUIRE`]) reserves it
//! atomically with the unit's leases, and the release settles it: the
//! reservation is replaced by the session's actual cost. Amounts travel and
//! are kept in Redis as whole micro-dollars, so that Lua's doubles add them
//! exactly and both sides round the same way.

use serde::{Deserialize, Serialize};

/// What an order says about its batch's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetReservation {
    /// The batch's cap, in micro-dollars.
    pub cap_micros: u64,
    /// What this session reserves against the cap until it settles: an
    /// estimate of its cost, in micro-dollars.
    pub reserve_micros: u64,
}

/// A batch budget's state in Redis (`Keys::batch_budget`), as the status shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSpend {
    /// Reservations of sessions in flight.
    pub reserved_micros: u64,
    /// Settled spend: actual costs of ended sessions, and the reservations
    /// of sessions lost or ended without a known cost.
    pub spent_micros: u64,
    pub cap_micros: u64,
}

impl BudgetSpend {
    /// Says whether a session reserving `reserve` fits under the cap now:
    /// the admission rule, the same as the lease script's.
    pub fn fits(&self, reserve_micros: u64) -> bool {
        self.reserved_micros
            .saturating_add(self.spent_micros)
            .saturating_add(reserve_micros)
            <= self.cap_micros
    }
}

/// Says where the budget stands, in the words `status` and the lease
/// script's refusal use: `batch budget: $X reserved + $Y spent of $Z`.
impl std::fmt::Display for BudgetSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch budget: ${:.2} reserved + ${:.2} spent of ${:.2}",
            usd(self.reserved_micros),
            usd(self.spent_micros),
            usd(self.cap_micros)
        )
    }
}

/// Converts dollars to whole micro-dollars, rounding to the nearest; a
/// negative or non-finite amount counts as nothing.
pub fn micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round() as u64
    } else {
        0
    }
}

/// Converts micro-dollars back to dollars.
pub fn usd(micros: u64) -> f64 {
    micros as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_to_micros_and_garbage_counts_as_nothing() {
        assert_eq!(micros(500.0), 500_000_000);
        assert_eq!(micros(0.000_000_4), 0);
        assert_eq!(micros(0.123_456_7), 123_457);
        assert_eq!(micros(-1.0), 0);
        assert_eq!(micros(f64::NAN), 0);
        assert_eq!(usd(1_500_000), 1.5);
    }

    #[test]
    fn the_rule_counts_reservations_and_spend_and_says_so() {
        let spend = BudgetSpend {
            reserved_micros: 2_000_000,
            spent_micros: 7_500_000,
            cap_micros: 10_000_000,
        };
        assert!(spend.fits(500_000));
        assert!(!spend.fits(500_001));
        assert_eq!(
            spend.to_string(),
            "batch budget: $2.00 reserved + $7.50 spent of $10.00"
        );
    }
}
