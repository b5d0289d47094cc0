//! A multi-layer perceptron in f32 with hand-written forward and backward passes: dense layers with ReLU
//! between them, softmax cross-entropy on the output, mini-batch SGD with optional momentum.
//!
//! Weights are stored input-major (`w[i * fan_out + o]`), so every inner loop walks two contiguous rows:
//! the forward pass and the weight gradient are `y += x_i · w_i` over a row of outputs (vectorised by the
//! compiler), the input gradient is a dot product of a row of output gradients with a weight row. Inputs that
//! are exactly 0 (most ReLU outputs) skip their row in the forward pass and in both gradients.

use super::data::{Dataset, SplitMix64};

/// One dense layer's parameters, their gradients and their momentum.
#[derive(Debug, Clone)]
struct Dense {
    fan_in: usize,
    fan_out: usize,
    /// `fan_in × fan_out`, input-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    grad_weights: Vec<f32>,
    grad_bias: Vec<f32>,
    velocity_weights: Vec<f32>,
    velocity_bias: Vec<f32>,
}

impl Dense {
    fn new(fan_in: usize, fan_out: usize, scale: f64, rng: &mut SplitMix64) -> Self {
        let weights = (0..fan_in * fan_out)
            .map(|_| (scale * rng.normal()) as f32)
            .collect();
        Self {
            fan_in,
            fan_out,
            weights,
            bias: vec![0.0; fan_out],
            grad_weights: vec![0.0; fan_in * fan_out],
            grad_bias: vec![0.0; fan_out],
            velocity_weights: vec![0.0; fan_in * fan_out],
            velocity_bias: vec![0.0; fan_out],
        }
    }

    /// `output = input · W + b` for `rows` rows, then ReLU when `relu`.
    fn forward(&self, input: &[f32], rows: usize, output: &mut [f32], relu: bool) {
        let (fi, fo) = (self.fan_in, self.fan_out);
        for r in 0..rows {
            let x = &input[r * fi..(r + 1) * fi];
            let y = &mut output[r * fo..(r + 1) * fo];
            y.copy_from_slice(&self.bias);
            for (i, &xi) in x.iter().enumerate() {
                if xi != 0.0 {
                    axpy(xi, &self.weights[i * fo..(i + 1) * fo], y);
                }
            }
            if relu {
                for v in y.iter_mut() {
                    *v = v.max(0.0);
                }
            }
        }
    }

    /// Accumulates this layer's gradients from `delta` (∂loss/∂output, `rows × fan_out`) and its `input`;
    /// when `input_delta` is given, writes ∂loss/∂input into it, through the ReLU that produced `input`.
    fn backward(
        &mut self,
        input: &[f32],
        rows: usize,
        delta: &[f32],
        input_delta: Option<&mut [f32]>,
    ) {
        let (fi, fo) = (self.fan_in, self.fan_out);
        self.grad_weights.fill(0.0);
        self.grad_bias.fill(0.0);
        for r in 0..rows {
            let d = &delta[r * fo..(r + 1) * fo];
            for (g, &v) in self.grad_bias.iter_mut().zip(d) {
                *g += v;
            }
            let x = &input[r * fi..(r + 1) * fi];
            for (i, &xi) in x.iter().enumerate() {
                if xi != 0.0 {
                    axpy(xi, d, &mut self.grad_weights[i * fo..(i + 1) * fo]);
                }
            }
        }
        if let Some(input_delta) = input_delta {
            for r in 0..rows {
                let d = &delta[r * fo..(r + 1) * fo];
                let x = &input[r * fi..(r + 1) * fi];
                let out = &mut input_delta[r * fi..(r + 1) * fi];
                for (i, (o, &xi)) in out.iter_mut().zip(x).enumerate() {
                    // The input came out of a ReLU: no gradient where it was clamped.
                    *o = if xi > 0.0 {
                        dot(d, &self.weights[i * fo..(i + 1) * fo])
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// One SGD step with heavy-ball momentum: `v = μ·v + g; w -= η·v` (plain `w -= η·g` when μ = 0).
    fn update(&mut self, learning_rate: f32, momentum: f32) {
        let pairs = [
            (
                &mut self.weights,
                &self.grad_weights,
                &mut self.velocity_weights,
            ),
            (&mut self.bias, &self.grad_bias, &mut self.velocity_bias),
        ];
        for (params, grads, velocity) in pairs {
            if momentum == 0.0 {
                for (p, &g) in params.iter_mut().zip(grads.iter()) {
                    *p -= learning_rate * g;
                }
            } else {
                for ((p, &g), v) in params.iter_mut().zip(grads.iter()).zip(velocity.iter_mut()) {
                    *v = momentum * *v + g;
                    *p -= learning_rate * *v;
                }
            }
        }
    }
}

/// `y += a · x`.
#[inline]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `a · b` with eight independent partial sums, so the compiler can vectorise it without reassociating.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// Buffers for one batch of up to `capacity` rows: every layer's output and two gradient buffers.
#[derive(Debug, Clone)]
pub struct Workspace {
    capacity: usize,
    outputs: Vec<Vec<f32>>,
    delta: Vec<f32>,
    input_delta: Vec<f32>,
}

/// Loss and accuracy of a model on a data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean softmax cross-entropy (nats).
    pub loss: f64,
    /// Fraction of samples whose largest logit is their class.
    pub accuracy: f64,
}

/// The model: dense layers with ReLU between them; the last layer's outputs are the class logits.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Dense>,
}

impl Mlp {
    /// A model with layer widths `widths` (input first, classes last, at least two entries), He-initialised
    /// from `seed` (biases 0; the output layer at half the scale so the first logits are small).
    pub fn new(widths: &[usize], seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x6d6c_7000_0000_0000);
        let count = widths.len().saturating_sub(1);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let he = (2.0 / w[0].max(1) as f64).sqrt();
                let scale = if l + 1 == count { he * 0.5 } else { he };
                Dense::new(w[0], w[1], scale, &mut rng)
            })
            .collect();
        Self { layers }
    }

    /// Input features per sample.
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.fan_in)
    }

    /// Number of classes (logits per sample).
    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.fan_out)
    }

    /// Trainable parameters (weights and biases).
    pub fn parameters(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weights.len() + l.bias.len())
            .sum()
    }

    /// Buffers for batches of up to `capacity` rows.
    pub fn workspace(&self, capacity: usize) -> Workspace {
        let widest = self
            .layers
            .iter()
            .map(|l| l.fan_in.max(l.fan_out))
            .max()
            .unwrap_or(0);
        Workspace {
            capacity,
            outputs: self
                .layers
                .iter()
                .map(|l| vec![0.0; capacity * l.fan_out])
                .collect(),
            delta: vec![0.0; capacity * widest],
            input_delta: vec![0.0; capacity * widest],
        }
    }

    /// Runs `rows` samples (`input`, row-major) through the model, leaving every layer's output in `ws`.
    fn forward_into(&self, input: &[f32], rows: usize, ws: &mut Workspace) {
        let last = self.layers.len().saturating_sub(1);
        for (l, layer) in self.layers.iter().enumerate() {
            let (done, rest) = ws.outputs.split_at_mut(l);
            let x: &[f32] = if l == 0 { input } else { &done[l - 1] };
            layer.forward(x, rows, &mut rest[0], l != last);
        }
    }

    /// The logits of `rows` samples: `rows × classes`, row-major. `rows` must not exceed the workspace's
    /// capacity and `input` must hold `rows × input_dim` features.
    pub fn forward<'w>(&self, input: &[f32], rows: usize, ws: &'w mut Workspace) -> &'w [f32] {
        let rows = rows.min(ws.capacity);
        self.forward_into(input, rows, ws);
        let classes = self.classes();
        ws.outputs
            .last()
            .map_or(&[][..], |logits| &logits[..rows * classes])
    }

    /// One SGD iteration on a batch of `labels.len()` samples (`input`, row-major, at most the workspace's
    /// capacity): forward, softmax cross-entropy, backward, update. Returns the batch's mean loss before the
    /// update.
    pub fn train_step(
        &mut self,
        input: &[f32],
        labels: &[u32],
        learning_rate: f32,
        momentum: f32,
        ws: &mut Workspace,
    ) -> f32 {
        let rows = labels.len().min(ws.capacity);
        if rows == 0 || self.layers.is_empty() {
            return 0.0;
        }
        self.forward_into(input, rows, ws);
        let classes = self.classes();
        let mut loss = 0.0f64;
        let scale = 1.0 / rows as f32;
        if let Some(logits) = ws.outputs.last() {
            for (r, &label) in labels[..rows].iter().enumerate() {
                let z = &logits[r * classes..(r + 1) * classes];
                let d = &mut ws.delta[r * classes..(r + 1) * classes];
                loss += softmax_cross_entropy(z, label as usize, d, scale);
            }
        }
        for l in (0..self.layers.len()).rev() {
            let x: &[f32] = if l == 0 { input } else { &ws.outputs[l - 1] };
            let fan_out = self.layers[l].fan_out;
            let fan_in = self.layers[l].fan_in;
            let delta = &ws.delta[..rows * fan_out];
            let input_delta = (l > 0).then(|| &mut ws.input_delta[..rows * fan_in]);
            self.layers[l].backward(x, rows, delta, input_delta);
            if l > 0 {
                std::mem::swap(&mut ws.delta, &mut ws.input_delta);
            }
        }
        for layer in &mut self.layers {
            layer.update(learning_rate, momentum);
        }
        (loss / rows as f64) as f32
    }

    /// Mean loss and accuracy on `data`, in batches of the workspace's capacity.
    pub fn evaluate(&self, data: &Dataset, ws: &mut Workspace) -> Evaluation {
        let classes = self.classes();
        let dim = self.input_dim();
        let (mut loss, mut correct) = (0.0f64, 0usize);
        let mut scratch = vec![0.0f32; classes];
        let chunk = ws.capacity.max(1);
        let mut start = 0;
        while start < data.len() {
            let rows = chunk.min(data.len() - start);
            let input = &data.features[start * dim..(start + rows) * dim];
            let logits = self.forward(input, rows, ws);
            for (r, &label) in data.labels[start..start + rows].iter().enumerate() {
                let z = &logits[r * classes..(r + 1) * classes];
                loss += softmax_cross_entropy(z, label as usize, &mut scratch, 1.0);
                if argmax(z) == label as usize {
                    correct += 1;
                }
            }
            start += rows;
        }
        let n = data.len().max(1) as f64;
        Evaluation {
            loss: loss / n,
            accuracy: correct as f64 / n,
        }
    }
}

/// The cross-entropy of `softmax(logits)` against `label`; writes `scale · (softmax − onehot)` (the gradient
/// with respect to the logits) into `grad`.
fn softmax_cross_entropy(logits: &[f32], label: usize, grad: &mut [f32], scale: f32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (g, &z) in grad.iter_mut().zip(logits) {
        let e = (z - max).exp();
        *g = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for g in grad.iter_mut() {
        *g *= inv * scale;
    }
    if let Some(g) = grad.get_mut(label) {
        *g -= scale;
    }
    let z = logits.get(label).copied().unwrap_or(max);
    f64::from(sum.ln() + max - z)
}

/// The index of the largest value (the first one on ties).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss of `model` on one batch, without training.
    fn batch_loss(model: &Mlp, input: &[f32], labels: &[u32]) -> f64 {
        let mut ws = model.workspace(labels.len());
        let data = Dataset {
            dim: model.input_dim(),
            classes: model.classes(),
            features: input.to_vec(),
            labels: labels.to_vec(),
        };
        model.evaluate(&data, &mut ws).loss
    }

    #[test]
    fn gradients_match_finite_differences() {
        let widths = [5, 7, 6, 3];
        let mut model = Mlp::new(&widths, 11);
        let mut rng = SplitMix64::new(5);
        let rows = 4;
        let input: Vec<f32> = (0..rows * 5).map(|_| rng.normal() as f32).collect();
        let labels = [0u32, 2, 1, 2];
        // A zero learning rate leaves the weights alone but fills the gradients.
        let mut ws = model.workspace(rows);
        model.train_step(&input, &labels, 0.0, 0.0, &mut ws);
        let eps = 1e-2f32;
        let mut checked = 0;
        for l in 0..model.layers.len() {
            for k in (0..model.layers[l].weights.len()).step_by(5) {
                let analytic = f64::from(model.layers[l].grad_weights[k]);
                let original = model.layers[l].weights[k];
                model.layers[l].weights[k] = original + eps;
                let up = batch_loss(&model, &input, &labels);
                model.layers[l].weights[k] = original - eps;
                let down = batch_loss(&model, &input, &labels);
                model.layers[l].weights[k] = original;
                let numeric = (up - down) / (2.0 * f64::from(eps));
                assert!(
                    (numeric - analytic).abs() < 2e-3 + 0.05 * analytic.abs(),
                    "layer {l} weight {k}: numeric {numeric}, analytic {analytic}"
                );
                checked += 1;
            }
            for k in 0..model.layers[l].bias.len() {
                let analytic = f64::from(model.layers[l].grad_bias[k]);
                let original = model.layers[l].bias[k];
                model.layers[l].bias[k] = original + eps;
                let up = batch_loss(&model, &input, &labels);
                model.layers[l].bias[k] = original - eps;
                let down = batch_loss(&model, &input, &labels);
                model.layers[l].bias[k] = original;
                let numeric = (up - down) / (2.0 * f64::from(eps));
                assert!(
                    (numeric - analytic).abs() < 2e-3 + 0.05 * analytic.abs(),
                    "layer {l} bias {k}: numeric {numeric}, analytic {analytic}"
                );
            }
        }
        assert!(checked > 10);
    }

    #[test]
    fn softmax_cross_entropy_of_uniform_logits_is_ln_classes() {
        let mut grad = [0.0f32; 4];
        let loss = softmax_cross_entropy(&[3.0; 4], 1, &mut grad, 1.0);
        assert!((loss - 4f64.ln()).abs() < 1e-6, "{loss}");
        assert!((grad[0] - 0.25).abs() < 1e-6 && (grad[1] + 0.75).abs() < 1e-6);
    }

    #[test]
    fn dot_and_axpy_match_the_naive_loops() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
        let mut y = b.clone();
        axpy(2.0, &a, &mut y);
        assert_eq!(y[3], b[3] + 2.0 * a[3]);
    }
}
