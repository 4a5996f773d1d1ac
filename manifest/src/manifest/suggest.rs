//! "Did you mean" suggestions for misspelt ids, resources, gates and field names.
//!
//! Suggestions only run on the error path, but a manifest with a million units and
//! thousands of typos must not turn validation quadratic: a [`Suggester`] has a budget
//! of work and stops suggesting once it is spent.

/// Work one validation run may spend on suggestions, in steps: one per candidate looked
/// at, plus one per pair of bytes an edit distance compares (about 2 ns each when
/// optimised, so about a second of work). The edit distance is quadratic in the names'
/// lengths: counting comparisons alone let a few thousand 200-character names, or a few
/// huge ones, buy minutes of work.
const COMPARISON_BUDGET: usize = 500_000_000;

/// Finds the closest known name to a misspelt one, within a comparison budget.
pub(crate) struct Suggester {
    budget: usize,
}

impl Default for Suggester {
    fn default() -> Self {
        Suggester {
            budget: COMPARISON_BUDGET,
        }
    }
}

impl Suggester {
    /// Returns the closest candidate that is reasonably close, or `None` when nothing is,
    /// or when the budget cannot pay for looking at every candidate.
    pub(crate) fn closest<'c, I>(&mut self, wrong: &str, candidates: I) -> Option<String>
    where
        I: IntoIterator<Item = &'c str>,
        I::IntoIter: ExactSizeIterator,
    {
        let candidates = candidates.into_iter();
        if candidates.len() > self.budget {
            return None;
        }
        self.budget -= candidates.len();
        closest_within(wrong, candidates, &mut self.budget)
    }
}

/// Returns the candidate with the smallest edit distance to `wrong`, if that distance is at
/// most a third of the name's length (so `custmer-pkg` finds `customer-pkg`, while `a`
/// never suggests `b`). Ties go to the earliest candidate, which keeps output stable.
pub(crate) fn closest<'c>(
    wrong: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<String> {
    let mut unlimited = usize::MAX;
    closest_within(wrong, candidates, &mut unlimited)
}

/// [`closest`], paying for each edit distance out of `budget`; gives up (`None`) when
/// the budget cannot pay for the next one.
fn closest_within<'c>(
    wrong: &str,
    candidates: impl Iterator<Item = &'c str>,
    budget: &mut usize,
) -> Option<String> {
    let wrong_len = wrong.chars().count();
    let allowed = wrong_len / 3;
    if allowed == 0 {
        // Still catch a wrong letter case, the commonest typo of short names.
        let lower = wrong.to_lowercase();
        return candidates
            .into_iter()
            // Lowercasing never shortens a name, and a character takes at most 4 bytes:
            // a much longer candidate cannot match, and is skipped without copying it.
            .filter(|candidate| candidate.len() <= lower.len() * 4)
            .find(|candidate| *candidate != wrong && candidate.to_lowercase() == lower)
            .map(str::to_owned);
    }
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        if candidate == wrong {
            continue;
        }
        // Length alone bounds the distance from below: skip hopeless candidates cheaply.
        if candidate.len().abs_diff(wrong.len()) > allowed * 4 {
            continue;
        }
        let cost = wrong.len().saturating_mul(candidate.len());
        if cost > *budget {
            *budget = 0;
            return None;
        }
        *budget -= cost;
        let distance = strsim::osa_distance(wrong, candidate);
        if distance <= allowed && best.is_none_or(|(best_distance, _)| distance < best_distance) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, name)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let ids = ["customer-pkg", "orders-pkg", "billing-pkg"];
        assert_eq!(
            closest("custmer-pkg", ids.iter().copied()),
            Some("customer-pkg".into())
        );
        assert_eq!(
            closest("ordres-pkg", ids.iter().copied()),
            Some("orders-pkg".into())
        );
        assert_eq!(closest("inventory", ids.iter().copied()), None);
        assert_eq!(closest("a", ["b", "c"].into_iter()), None);
        assert_eq!(closest("A", ["b", "a"].into_iter()), Some("a".into()));
    }

    #[test]
    fn budget_stops_suggestions() {
        // Two candidates looked at, then 5 x 5 and 5 x 4 byte pairs compared.
        let mut suggester = Suggester {
            budget: 2 + 25 + 20,
        };
        let names = ["alpha", "beta"];
        assert_eq!(suggester.closest("alpah", names), Some("alpha".into()));
        assert_eq!(suggester.closest("alpah", names), None);
    }

    #[test]
    fn long_names_pay_for_their_length() {
        // One edit distance between two 30,000-byte names is 900 million steps: more
        // than the budget, so it is not computed (it took minutes unoptimised).
        let wrong = "b".repeat(30_000);
        let id = "a".repeat(30_000);
        let started = std::time::Instant::now();
        let mut suggester = Suggester::default();
        assert_eq!(suggester.closest(&wrong, [id.as_str()]), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(suggester.budget, 0);
    }
}
