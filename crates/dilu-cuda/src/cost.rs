//! What a launch costs: `blocks × threads per block`, normalised by the device's resident thread slots.
//!
//! A launch that fills every resident thread slot of the device once (`SMs × max threads per SM` threads)
//! costs [`COST_UNITS_PER_WAVE`] units, so budgets mean the same on a 132-SM H100 and a 46-SM T4, and a
//! kernel of 1,024 blocks of 32 threads costs as much as one of 32 blocks of 1,024 threads (HAMi counted
//! grid size only). The division is replaced by a 32.32 fixed-point multiplier computed once per device.

use dilu_quota::COST_UNITS_PER_WAVE;

/// Multiplier for [`cost_units`]: `COST_UNITS_PER_WAVE × 2^32 / resident_threads`, rounded up.
/// A `resident_threads` of 0 (unknown) makes cost equal raw thread count.
pub fn cost_multiplier(resident_threads: u64) -> u64 {
    if resident_threads == 0 {
        return 1 << 32;
    }
    let scaled = (u128::from(COST_UNITS_PER_WAVE) << 32).div_ceil(u128::from(resident_threads));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Threads in a launch of `grid` blocks of `block` threads, saturating.
pub fn launch_threads(grid: [u32; 3], block: [u32; 3]) -> u64 {
    let blocks = u64::from(grid[0])
        .saturating_mul(u64::from(grid[1]))
        .saturating_mul(u64::from(grid[2]));
    let per_block = u64::from(block[0])
        .saturating_mul(u64::from(block[1]))
        .saturating_mul(u64::from(block[2]));
    blocks.saturating_mul(per_block)
}

/// Cost units of `threads` with a device's `multiplier`; at least 1 so every launch is seen by the budget.
pub fn cost_units(threads: u64, multiplier: u64) -> u64 {
    let cost = (u128::from(threads) * u128::from(multiplier)) >> 32;
    u64::try_from(cost).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100_RESIDENT: u64 = 132 * 2048;

    #[test]
    fn one_full_wave_costs_one_million_units() {
        let mult = cost_multiplier(H100_RESIDENT);
        assert_eq!(
            cost_units(launch_threads([264, 1, 1], [1024, 1, 1]), mult),
            1_000_000
        );
        assert_eq!(
            cost_units(launch_threads([528, 1, 1], [1024, 1, 1]), mult),
            2_000_000
        );
    }

    #[test]
    fn block_shape_matters_not_just_grid_size() {
        let mult = cost_multiplier(H100_RESIDENT);
        let narrow = cost_units(launch_threads([1024, 1, 1], [32, 1, 1]), mult);
        let wide = cost_units(launch_threads([32, 1, 1], [1024, 1, 1]), mult);
        assert_eq!(narrow, wide);
        let small = cost_units(launch_threads([1024, 1, 1], [1, 1, 1]), mult);
        assert!(small * 30 < narrow, "{small} vs {narrow}");
    }

    #[test]
    fn tiny_launches_cost_at_least_one_and_huge_ones_saturate() {
        let mult = cost_multiplier(H100_RESIDENT);
        assert_eq!(cost_units(1, mult), 3);
        assert_eq!(cost_units(0, mult), 1);
        let max = launch_threads([u32::MAX; 3], [1024, 1024, 64]);
        assert_eq!(max, u64::MAX);
        assert_eq!(cost_units(max, mult), u64::MAX);
        assert_eq!(cost_units(12345, cost_multiplier(0)), 12345);
    }
}
