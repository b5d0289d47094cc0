//! Output helpers shared by subcommands: formats, progress bars, seed ranges, summary statistics.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::str::FromStr;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// JSON for programs.
    Json,
}

/// An inclusive range of seeds, written `A..B` (or a single `A`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedRange {
    /// First seed.
    pub first: i64,
    /// Last seed (inclusive).
    pub last: i64,
}

impl FromStr for SeedRange {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (a, b) = s.split_once("..").unwrap_or((s, s));
        let first: i64 = a
            .trim()
            .parse()
            .with_context(|| format!("seed range '{s}': '{a}' is not an integer"))?;
        let last: i64 = b
            .trim()
            .parse()
            .with_context(|| format!("seed range '{s}': '{b}' is not an integer"))?;
        if last < first {
            bail!("seed range '{s}': the last seed must not be below the first");
        }
        if last - first >= 10_000 {
            bail!("seed range '{s}': at most 10000 seeds");
        }
        Ok(SeedRange { first, last })
    }
}

impl SeedRange {
    /// The seeds in order.
    pub fn seeds(&self) -> impl Iterator<Item = i64> {
        self.first..=self.last
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>24} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// Creates the parent folder of an output file if it does not exist yet.
pub fn ensure_parent_dir(path: &std::path::Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Median of a sample (mean of the middle two for an even count); `NaN` when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Parses a comma-separated list of values.
pub fn parse_list<T: FromStr>(s: &str) -> Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.split(',')
        .map(|p| p.trim().parse::<T>().map_err(anyhow::Error::from))
        .collect::<Result<Vec<T>>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges() {
        assert_eq!("42..51".parse::<SeedRange>().unwrap().seeds().count(), 10);
        assert_eq!(
            "7".parse::<SeedRange>().unwrap(),
            SeedRange { first: 7, last: 7 }
        );
        assert!("9..3".parse::<SeedRange>().is_err());
        assert!(
            "a..3"
                .parse::<SeedRange>()
                .unwrap_err()
                .to_string()
                .contains("'a'")
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
