//! Byte sizes as people write them: `512`, `4GiB`, `1.5 GB`, `unlimited`.

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {rule}")]
pub struct SizeError {
    /// The rejected text.
    pub value: String,
    /// What a size must look like.
    pub rule: &'static str,
}

const SIZE_RULE: &str = "expected a byte count such as 512, 64KiB, 4GiB or 1.5GB (units B, KB, MB, GB, TB, \
                         KiB, MiB, GiB, TiB; K/M/G/T alone mean KiB/MiB/GiB/TiB)";

/// Parses a byte size: a non-negative number with an optional unit. Decimal units (`KB`, `MB`, …) are powers
/// of 1000, binary units (`KiB`, … and the bare `K`, `M`, `G`, `T` Kubernetes-style shorthands read as binary)
/// powers of 1024. Fractions are allowed and rounded down to whole bytes.
pub fn parse_bytes(text: &str) -> Result<u64, SizeError> {
    let error = || SizeError {
        value: text.to_string(),
        rule: SIZE_RULE,
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        _ => return Err(error()),
    };
    if number.is_empty() {
        return Err(error());
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier).ok_or_else(|| SizeError {
            value: text.to_string(),
            rule: "does not fit in 64 bits",
        });
    }
    let value: f64 = number.parse().map_err(|_| error())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(SizeError {
            value: text.to_string(),
            rule: "does not fit in 64 bits",
        });
    }
    Ok(bytes as u64)
}

/// Formats bytes with the largest binary unit that keeps the number at least 1 (`1.50 GiB`, `512 B`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.2} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimal_binary_and_fractional_sizes() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("4 gib"), Ok(4 << 30));
        assert_eq!(parse_bytes("4G"), Ok(4 << 30));
        assert_eq!(parse_bytes("4Gi"), Ok(4 << 30));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("0"), Ok(0));
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for bad in ["", "GiB", "-1", "4 parsecs", "1.2.3MB", "99999999999TiB"] {
            let error = parse_bytes(bad).unwrap_err();
            assert_eq!(error.value, bad);
        }
        assert_eq!(
            parse_bytes("99999999999TiB").unwrap_err().rule,
            "does not fit in 64 bits"
        );
        assert!(
            parse_bytes("4 parsecs")
                .unwrap_err()
                .to_string()
                .contains("KiB")
        );
    }

    #[test]
    fn formats_with_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(4 << 30), "4.00 GiB");
    }
}
