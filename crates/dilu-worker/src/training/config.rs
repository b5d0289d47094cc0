//! What a training function trains, on what data, and how fast it may go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::WorkerError;

/// A training function's settings.
///
/// The defaults make one iteration (forward, backward and update of a 128-sample batch through a
/// 32 → 128 → 128 → 8 MLP: 21 640 parameters, about 17 MFLOP) take about 1.6 ms on one core of a release
/// build (some 60 ms in an unoptimised debug build), and reach about 99% held-out accuracy within a few
/// hundred iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Features per sample (the MLP's input width).
    pub input_dim: usize,
    /// Width of every hidden layer.
    pub hidden: usize,
    /// Hidden layers (ReLU); 0 trains a softmax regression.
    pub layers: usize,
    /// Classes of the synthetic data set (the MLP's output width).
    pub classes: usize,
    /// Samples per mini-batch (one iteration).
    pub batch_size: usize,
    /// SGD step size.
    pub learning_rate: f64,
    /// SGD momentum (heavy ball); 0 for plain SGD.
    pub momentum: f64,
    /// Seeds the data set and the initial weights: the same seed trains the same numbers.
    pub seed: u64,
    /// Standard deviation of the Gaussian noise around each cluster centre (the centres themselves are drawn
    /// with standard deviation 1 per feature); larger is harder.
    pub noise: f64,
    /// Size of the training set, cycled through in a freshly shuffled order every epoch.
    pub train_samples: usize,
    /// Size of the held-out set the accuracy is measured on.
    pub eval_samples: usize,
    /// Iterations between two evaluations on the held-out set.
    pub eval_every: u64,
    /// Stop after this many iterations; `None` trains until shut down.
    pub max_iterations: Option<u64>,
    /// The CPU quota channel; `None` reads `DILU_QUOTA_FILE` (and runs unthrottled when that is unset).
    pub quota_file: Option<PathBuf>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            input_dim: 32,
            hidden: 128,
            layers: 2,
            classes: 8,
            batch_size: 128,
            learning_rate: 0.05,
            momentum: 0.9,
            seed: 1,
            noise: 1.0,
            train_samples: 16384,
            eval_samples: 1024,
            eval_every: 200,
            max_iterations: None,
            quota_file: None,
        }
    }
}

/// The most parameters a model may have (1 GiB of f32 weights, before gradients and momentum).
pub const MAX_PARAMETERS: u64 = 1 << 28;

/// The most features, units or classes one layer may have.
pub const MAX_WIDTH: usize = 1 << 16;

impl TrainingConfig {
    /// The widths of the MLP's layers, input first: `[input_dim, hidden × layers, classes]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths = Vec::with_capacity(self.layers + 2);
        widths.push(self.input_dim);
        widths.extend(std::iter::repeat_n(self.hidden, self.layers));
        widths.push(self.classes);
        widths
    }

    /// The number of trainable parameters (weights and biases).
    pub fn parameters(&self) -> u64 {
        self.widths()
            .windows(2)
            .map(|w| (w[0] as u64).saturating_mul(w[1] as u64) + w[1] as u64)
            .fold(0u64, u64::saturating_add)
    }

    /// Checks every setting; the error names the field, its value and the rule it breaks.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let invalid =
            |field, value: String, rule| Err(WorkerError::InvalidConfig { field, value, rule });
        let widths = [
            ("training.input_dim", self.input_dim, 1),
            ("training.hidden", self.hidden, 1),
            ("training.classes", self.classes, 2),
        ];
        for (field, value, min) in widths {
            if value < min || value > MAX_WIDTH {
                let rule = if min == 1 {
                    "must be in 1..=65536"
                } else {
                    "must be in 2..=65536"
                };
                return invalid(field, value.to_string(), rule);
            }
        }
        if self.layers > 64 {
            return invalid(
                "training.layers",
                self.layers.to_string(),
                "must be in 0..=64",
            );
        }
        if self.batch_size == 0 || self.batch_size > MAX_WIDTH {
            return invalid(
                "training.batch_size",
                self.batch_size.to_string(),
                "must be in 1..=65536",
            );
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 10.0)
        {
            return invalid(
                "training.learning_rate",
                self.learning_rate.to_string(),
                "must be a number in (0, 10]",
            );
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return invalid(
                "training.momentum",
                self.momentum.to_string(),
                "must be a number in [0, 1)",
            );
        }
        if !(self.noise.is_finite() && (0.0..=1000.0).contains(&self.noise)) {
            return invalid(
                "training.noise",
                self.noise.to_string(),
                "must be a number in [0, 1000]",
            );
        }
        if self.train_samples == 0 || self.train_samples > 1 << 24 {
            return invalid(
                "training.train_samples",
                self.train_samples.to_string(),
                "must be in 1..=16777216",
            );
        }
        if self.eval_samples == 0 || self.eval_samples > 1 << 24 {
            return invalid(
                "training.eval_samples",
                self.eval_samples.to_string(),
                "must be in 1..=16777216",
            );
        }
        let features = (self.train_samples as u64 + self.eval_samples as u64)
            .saturating_mul(self.input_dim as u64);
        if features > MAX_PARAMETERS {
            return invalid(
                "training.train_samples",
                self.train_samples.to_string(),
                "with eval_samples, times input_dim, must be at most 2^28 features",
            );
        }
        if self.eval_every == 0 {
            return invalid("training.eval_every", "0".into(), "must be at least 1");
        }
        if self.max_iterations == Some(0) {
            return invalid(
                "training.max_iterations",
                "0".into(),
                "must be at least 1 (leave it unset to train until shut down)",
            );
        }
        let parameters = self.parameters();
        if parameters > MAX_PARAMETERS {
            return invalid(
                "training.hidden",
                format!("{} ({parameters} parameters)", self.hidden),
                "the model must have at most 2^28 parameters",
            );
        }
        let activations = (self.batch_size as u64).saturating_mul(
            self.widths()
                .iter()
                .map(|&w| w as u64)
                .fold(0, u64::saturating_add),
        );
        if activations > MAX_PARAMETERS {
            return invalid(
                "training.batch_size",
                self.batch_size.to_string(),
                "times the sum of the layer widths must be at most 2^28 activations",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sized_as_documented() {
        let c = TrainingConfig::default();
        c.validate().unwrap();
        assert_eq!(c.widths(), vec![32, 128, 128, 8]);
        assert_eq!(
            c.parameters(),
            32 * 128 + 128 + 128 * 128 + 128 + 128 * 8 + 8
        );
    }

    #[test]
    fn validate_names_field_value_and_rule() {
        let ok = TrainingConfig::default();
        let cases: Vec<(TrainingConfig, &str)> = vec![
            (
                TrainingConfig {
                    hidden: 0,
                    ..ok.clone()
                },
                "training.hidden = 0",
            ),
            (
                TrainingConfig {
                    classes: 1,
                    ..ok.clone()
                },
                "training.classes = 1",
            ),
            (
                TrainingConfig {
                    layers: 65,
                    ..ok.clone()
                },
                "training.layers = 65",
            ),
            (
                TrainingConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "training.batch_size = 0",
            ),
            (
                TrainingConfig {
                    learning_rate: f64::NAN,
                    ..ok.clone()
                },
                "training.learning_rate = NaN",
            ),
            (
                TrainingConfig {
                    momentum: 1.0,
                    ..ok.clone()
                },
                "training.momentum = 1",
            ),
            (
                TrainingConfig {
                    eval_every: 0,
                    ..ok.clone()
                },
                "training.eval_every = 0",
            ),
            (
                TrainingConfig {
                    max_iterations: Some(0),
                    ..ok.clone()
                },
                "training.max_iterations = 0",
            ),
            (
                TrainingConfig {
                    hidden: 60_000,
                    layers: 2,
                    ..ok.clone()
                },
                "training.hidden = 60000",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
            assert!(err.contains("must"), "{err:?} should state the rule");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<TrainingConfig>(r#"{"hiden": 3}"#).unwrap_err();
        assert!(err.to_string().contains("hiden"), "{err}");
        let c: TrainingConfig = serde_json::from_str(r#"{"hidden": 3}"#).unwrap();
        assert_eq!(c.hidden, 3);
        assert_eq!(c.layers, TrainingConfig::default().layers);
    }
}
