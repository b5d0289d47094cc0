//! Batch-time variation: the factor each batch's work is drawn with when a function's `service_cv` is above
//! zero (a lognormal of mean 1 and that coefficient of variation), so that a simulated instance's batches vary
//! as a live one's do. With `service_cv` 0 every batch is exactly the table's time and no number is drawn.

use crate::prng::Prng;

/// Draws the work of each batch of one function, relative to the table's time.
#[derive(Debug, Clone)]
pub struct ServiceJitter {
    rng: Prng,
    /// Parameters of ln(factor) ~ N(mu, sigma²); sigma 0: no variation.
    mu: f64,
    sigma: f64,
}

impl ServiceJitter {
    /// A stream for coefficient of variation `cv` (≥ 0) from `seed`.
    pub fn new(cv: f64, seed: u64) -> Self {
        let var = if cv.is_finite() && cv > 0.0 {
            (1.0 + cv * cv).ln()
        } else {
            0.0
        };
        ServiceJitter {
            rng: Prng::new(seed),
            mu: -var / 2.0,
            sigma: var.sqrt(),
        }
    }

    /// The next batch's work factor (1.0 without variation).
    pub fn draw(&mut self) -> f64 {
        if self.sigma == 0.0 {
            return 1.0;
        }
        // Box–Muller: u1 in (0, 1] so that its logarithm is finite.
        let u1 = 1.0 - self.rng.next_f64();
        let u2 = self.rng.next_f64();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (self.mu + self.sigma * z).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_mean_one_and_the_asked_variation() {
        let mut j = ServiceJitter::new(0.3, 7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| j.draw()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!(
            (var.sqrt() / mean - 0.3).abs() < 0.01,
            "cv {}",
            var.sqrt() / mean
        );
        assert!(xs.iter().all(|x| x.is_finite() && *x > 0.0));
        // The same seed draws the same factors.
        let mut again = ServiceJitter::new(0.3, 7);
        assert_eq!(again.draw(), xs[0]);
    }

    #[test]
    fn no_variation_is_exactly_one() {
        let mut j = ServiceJitter::new(0.0, 1);
        assert!((0..10).all(|_| j.draw() == 1.0));
    }
}
