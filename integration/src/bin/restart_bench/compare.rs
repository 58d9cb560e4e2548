//! Interleaved comparisons: two row kinds measured in alternating short slices.
//!
//! On a shared 2-vCPU machine the throughput of back-to-back 20 s rows drifts by up to 25 %,
//! far more than the few percent a target compares. A comparison therefore runs `pairs`
//! pairs of short slices against one server per arm (`warm.rs`), base and test alternating
//! in ABBA order (base-test, test-base, base-test, ...) so that a linear drift cancels. What is left
//! is heavy-tailed: a neighbour's burst can cost one slice 30 % (it hits base and test slices
//! alike), so the figure a target checks is the median of the per-pair ratios, as Go's
//! benchstat reports medians; the ratio of the mean req/s is printed next to it.

use crate::scenario::{Row, RowSpec, Runner};

/// What to compare.
#[derive(Clone, Copy, Debug)]
pub struct CompareSpec {
    /// The reference (e.g. control).
    pub base: RowSpec,
    /// What is measured against it (e.g. endless, one upgrade per slice).
    pub test: RowSpec,
    /// Number of (base, test) pairs.
    pub pairs: u32,
}

/// The slices of one comparison, in the order they ran.
pub struct Comparison {
    /// What was compared.
    pub spec: CompareSpec,
    /// Base slices.
    pub base: Vec<Row>,
    /// Test slices.
    pub test: Vec<Row>,
}

/// Figures of a comparison whose slices all ran.
pub struct Figures {
    /// Mean req/s of the base slices.
    pub base_rps: f64,
    /// Mean req/s of the test slices.
    pub test_rps: f64,
    /// `test_rps / base_rps`.
    pub mean_ratio: f64,
    /// Per-pair req/s ratios test / base, sorted.
    pub pair_ratios: Vec<f64>,
    /// Per-pair p99 latency ratios test / base, sorted.
    pub pair_p99_ratios: Vec<f64>,
    /// Failed requests (non-2xx + socket errors) in the test slices.
    pub test_failed: u64,
    /// Failed requests in the base slices.
    pub base_failed: u64,
    /// Upgrades completed / requested in the test slices.
    pub upgrades: (u32, u32),
    /// Upgrade problems reported by the test slices.
    pub problems: Vec<String>,
}

impl Figures {
    /// Median of the per-pair req/s ratios: the figure the throughput targets check.
    pub fn ratio(&self) -> f64 {
        median(&self.pair_ratios)
    }

    /// Median of the per-pair p99 ratios.
    pub fn p99_ratio(&self) -> f64 {
        median(&self.pair_p99_ratios)
    }
}

/// Median of a sorted, non-empty slice (mean of the two middle values for an even count).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

impl Comparison {
    /// Runs the slices against one server per arm (`warm.rs`); `progress` sees each one as
    /// it finishes. Stops early when the benchmark is interrupted.
    pub fn run(runner: &mut Runner, spec: CompareSpec, progress: impl FnMut(&Row)) -> Self {
        let (base, test) = runner.warm_pairs(spec.base, spec.test, spec.pairs, progress);
        Comparison { spec, base, test }
    }

    /// The figures, or why there are none (a slice failed to run or none ran).
    pub fn figures(&self) -> Result<Figures, String> {
        let figures = |rows: &[Row]| -> Result<Vec<(f64, f64)>, String> {
            rows.iter()
                .map(|r| match &r.result {
                    Ok(d) => Ok((d.wrk.req_per_sec, d.wrk.p99.as_secs_f64())),
                    Err(e) => Err(format!(
                        "a {} slice failed: {}",
                        r.spec.kind.name(),
                        e.lines().next().unwrap_or("")
                    )),
                })
                .collect()
        };
        let (base, test) = (figures(&self.base)?, figures(&self.test)?);
        if base.is_empty() || base.len() != test.len() {
            return Err(format!(
                "{} base and {} test slices ran",
                base.len(),
                test.len()
            ));
        }
        let mean = |v: &[(f64, f64)]| v.iter().map(|f| f.0).sum::<f64>() / v.len() as f64;
        let (base_rps, test_rps) = (mean(&base), mean(&test));
        let sorted_ratios = |of: fn(&(f64, f64)) -> f64| {
            let mut r: Vec<f64> = test.iter().zip(&base).map(|(t, b)| of(t) / of(b)).collect();
            r.sort_by(f64::total_cmp);
            r
        };
        // Every slice ran (checked above).
        let base_data = self.base.iter().filter_map(|r| r.result.as_ref().ok());
        let test_data: Vec<_> = self
            .test
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .collect();
        Ok(Figures {
            base_rps,
            test_rps,
            mean_ratio: test_rps / base_rps,
            pair_ratios: sorted_ratios(|f| f.0),
            pair_p99_ratios: sorted_ratios(|f| f.1),
            test_failed: test_data.iter().map(|d| d.wrk.failed()).sum(),
            base_failed: base_data.map(|d| d.wrk.failed()).sum(),
            upgrades: test_data.iter().fold((0, 0), |(c, r), d| {
                (c + d.restarts.completed, r + d.restarts.requested)
            }),
            problems: test_data
                .iter()
                .flat_map(|d| d.restarts.problems.iter().cloned())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[0.7, 0.9, 1.2]), 0.9);
        assert_eq!(median(&[0.7, 0.9, 1.0, 1.2]), 0.95);
    }
}
