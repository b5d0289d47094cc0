//! Virtual device IDs: `<device UUID>::<share index>` (`GPU-8c5a…::07`).
//!
//! The kubelet hands `Allocate` only device IDs, never the pod. Because each ID names its physical device,
//! `Allocate` (and `GetPreferredAllocation`) know the device from the IDs alone: no lock, no lookup.

use crate::Error;

/// The separator between the device UUID and the share index (UUIDs never contain it).
pub const SEPARATOR: &str = "::";

/// The virtual ID of share `index` of device `uuid`: two digits at least, so IDs sort in share order.
pub fn virtual_id(uuid: &str, index: u32) -> String {
    format!("{uuid}{SEPARATOR}{index:02}")
}

/// Splits a virtual ID into the device UUID and the share index.
pub fn parse(id: &str) -> Result<(&str, u32), Error> {
    let bad = |rule| Error::BadDeviceId {
        id: id.to_string(),
        rule,
    };
    let (uuid, index) = id
        .rsplit_once(SEPARATOR)
        .ok_or_else(|| bad("must be <device UUID>::<share index>"))?;
    if uuid.is_empty() {
        return Err(bad("the device UUID is empty"));
    }
    let index = index
        .parse::<u32>()
        .map_err(|_| bad("the share index must be a decimal number"))?;
    Ok((uuid, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_name_their_device() {
        let id = virtual_id("GPU-8c5a0f3e-1111-2222-3333-444455556666", 7);
        assert_eq!(id, "GPU-8c5a0f3e-1111-2222-3333-444455556666::07");
        assert_eq!(
            parse(&id).unwrap(),
            ("GPU-8c5a0f3e-1111-2222-3333-444455556666", 7)
        );
        assert_eq!(parse("CPU-ab::123").unwrap(), ("CPU-ab", 123));
    }

    #[test]
    fn malformed_ids_are_refused_with_the_rule() {
        for (id, rule) in [
            ("GPU-1", "must be"),
            ("::03", "empty"),
            ("GPU-1::x", "decimal"),
            ("GPU-1::", "decimal"),
        ] {
            let error = parse(id).unwrap_err().to_string();
            assert!(error.contains(rule), "{id}: {error}");
        }
    }
}
