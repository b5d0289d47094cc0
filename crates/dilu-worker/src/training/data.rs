//! The synthetic data set: Gaussian clusters, two per class, drawn from a seeded PRNG so that a seed always
//! gives the same samples (no `rand` dependency: SplitMix64 and the Box–Muller transform are enough here).

/// SplitMix64: a small, fast, statistically sound 64-bit generator (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform index in `0..n` (`n > 0`; Lemire's multiply-shift, bias below 2^-32 for any `n` we use).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A standard normal number (Box–Muller; one of the pair is dropped for simplicity).
    pub fn normal(&mut self) -> f64 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.next_f64();
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Cluster centres per class: two, so that classes are not linearly separable in general.
pub const CLUSTERS_PER_CLASS: usize = 2;

/// Labelled samples, row-major: sample `i` is `features[i * dim..(i + 1) * dim]` with class `labels[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Features per sample.
    pub dim: usize,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// All samples' features, one row after another.
    pub features: Vec<f32>,
    /// Each sample's class.
    pub labels: Vec<u32>,
}

impl Dataset {
    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Sample `index`'s features.
    pub fn row(&self, index: usize) -> &[f32] {
        &self.features[index * self.dim..(index + 1) * self.dim]
    }
}

/// The distribution samples are drawn from: for every class [`CLUSTERS_PER_CLASS`] centres with standard
/// normal coordinates; a sample is a uniformly chosen class, one of its centres, plus Gaussian noise of
/// standard deviation `noise` in every coordinate.
#[derive(Debug, Clone)]
pub struct Clusters {
    dim: usize,
    classes: usize,
    noise: f64,
    centres: Vec<f32>,
}

impl Clusters {
    /// The clusters of `classes` classes in `dim` dimensions, placed by `seed`.
    pub fn new(dim: usize, classes: usize, noise: f64, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x636c_7573_7465_7273);
        let centres = (0..classes * CLUSTERS_PER_CLASS * dim)
            .map(|_| rng.normal() as f32)
            .collect();
        Self {
            dim,
            classes,
            noise,
            centres,
        }
    }

    /// `n` samples drawn with `rng`.
    pub fn sample(&self, n: usize, rng: &mut SplitMix64) -> Dataset {
        let mut features = Vec::with_capacity(n * self.dim);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let class = rng.below(self.classes);
            let cluster = class * CLUSTERS_PER_CLASS + rng.below(CLUSTERS_PER_CLASS);
            let centre = &self.centres[cluster * self.dim..(cluster + 1) * self.dim];
            features.extend(
                centre
                    .iter()
                    .map(|&c| c + (self.noise * rng.normal()) as f32),
            );
            // Classes are at most 65536 (validated), so this never truncates.
            labels.push(class as u32);
        }
        Dataset {
            dim: self.dim,
            classes: self.classes,
            features,
            labels,
        }
    }
}

/// The training and held-out sets for `seed`: the same clusters, independent samples.
pub fn train_and_eval(
    dim: usize,
    classes: usize,
    noise: f64,
    train: usize,
    eval: usize,
    seed: u64,
) -> (Dataset, Dataset) {
    let clusters = Clusters::new(dim, classes, noise, seed);
    let mut train_rng = SplitMix64::new(seed ^ 0x7472_6169_6e00_0000);
    let mut eval_rng = SplitMix64::new(seed ^ 0x6576_616c_0000_0000);
    (
        clusters.sample(train, &mut train_rng),
        clusters.sample(eval, &mut eval_rng),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_numbers_have_mean_0_and_variance_1() {
        let mut rng = SplitMix64::new(7);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn a_seed_gives_the_same_data_and_classes_are_balanced() {
        let (a, ea) = train_and_eval(8, 4, 1.0, 4000, 100, 3);
        let (b, eb) = train_and_eval(8, 4, 1.0, 4000, 100, 3);
        assert_eq!(a, b);
        assert_eq!(ea, eb);
        assert_ne!(a.features[..800], ea.features[..800]);
        let (c, _) = train_and_eval(8, 4, 1.0, 4000, 100, 4);
        assert_ne!(a, c);
        for class in 0..4 {
            let count = a.labels.iter().filter(|&&l| l == class).count();
            assert!((800..1200).contains(&count), "class {class}: {count}");
        }
        assert_eq!(a.row(1), &a.features[8..16]);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = SplitMix64::new(1);
        let mut v: Vec<usize> = (0..100).collect();
        rng.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
