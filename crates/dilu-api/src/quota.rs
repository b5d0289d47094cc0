//! The quota: what one instance holds on its device. The same type is written in function specs
//! (`quota: {request: 0.2, limit: 0.5, memory: 1GiB}`), sent to the node agent and shown by every API.

use dilu_core::FieldError;
use dilu_core::units::parse_bytes;
use serde::{Deserialize, Deserializer, Serialize};

/// An instance's share of its device: the guaranteed `request`, the `limit` it may burst to (both fractions of
/// the device in (0, 1]), and an optional memory cap in bytes.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Guaranteed share of the device, (0, 1].
    pub request: f64,
    /// Most the instance may use, [request, 1].
    pub limit: f64,
    /// Memory cap in bytes (`"1GiB"` or a number); none = no cap. Also accepted as `memory_bytes`.
    #[serde(
        default,
        alias = "memory_bytes",
        deserialize_with = "de_size",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::quota::size_schema")
    )]
    pub memory: Option<u64>,
}

/// `PATCH /instances/{id}/quota` on the agent: new request and/or limit (and memory cap); omitted fields keep
/// their value.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdate {
    /// New guaranteed share.
    #[serde(default)]
    pub request: Option<f64>,
    /// New limit.
    #[serde(default)]
    pub limit: Option<f64>,
    /// New memory cap in bytes.
    #[serde(default, alias = "memory_bytes", deserialize_with = "de_size")]
    pub memory: Option<u64>,
}

impl Quota {
    /// A quota without a memory cap.
    pub fn new(request: f64, limit: f64) -> Quota {
        Quota {
            request,
            limit,
            memory: None,
        }
    }

    /// Checks `0 < request ≤ limit ≤ 1` with finite values and a positive memory cap; `field` prefixes the
    /// names in errors (`quota` gives `quota.request`).
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        for (name, value) in [("request", self.request), ("limit", self.limit)] {
            FieldError::require(
                value.is_finite() && value > 0.0 && value <= 1.0,
                format!("{field}.{name}"),
                value,
                "must be a fraction of a device in (0, 1]",
            )?;
        }
        FieldError::require(
            self.request <= self.limit,
            format!("{field}.request"),
            self.request,
            format!("must not exceed {field}.limit ({})", self.limit),
        )?;
        FieldError::require(
            self.memory != Some(0),
            format!("{field}.memory"),
            0,
            "must be positive (omit it for no cap)",
        )
    }

    /// This quota with `update` applied.
    pub fn updated(&self, update: &QuotaUpdate) -> Quota {
        Quota {
            request: update.request.unwrap_or(self.request),
            limit: update.limit.unwrap_or(self.limit),
            memory: update.memory.or(self.memory),
        }
    }

    /// Whether two quotas give the same shares (to a millionth) and cap.
    pub fn same_as(&self, other: &Quota) -> bool {
        (self.request - other.request).abs() < 1e-6
            && (self.limit - other.limit).abs() < 1e-6
            && self.memory == other.memory
    }
}

/// A size written as `"1GiB"`, `"512MB"` or a plain number of bytes; negative numbers are refused.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(i64),
    Float(f64),
    Text(String),
}

fn size_of(text: SizeText) -> Result<u64, String> {
    match text {
        SizeText::Number(n) if n < 0 => Err(format!("{n}: a size must not be negative")),
        SizeText::Number(n) => Ok(n as u64),
        SizeText::Float(f) if f < 0.0 => Err(format!("{f}: a size must not be negative")),
        SizeText::Float(f) => Err(format!(
            "{f}: a size is a whole number of bytes or e.g. \"1GiB\""
        )),
        SizeText::Text(t) if t.trim_start().starts_with('-') => {
            Err(format!("{t:?}: a size must not be negative"))
        }
        SizeText::Text(t) => parse_bytes(&t).map_err(|e| e.to_string()),
    }
}

/// Deserializes an optional size (`"1GiB"`, a number of bytes, or null).
pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = Option::<SizeText>::deserialize(d)?;
    text.map(size_of)
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// Deserializes a required size.
pub fn de_size_required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    size_of(SizeText::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// The JSON Schema of a size (`"1GiB"` or a number of bytes): Kubernetes' int-or-string.
#[cfg(feature = "schema")]
pub(crate) fn size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "description": "bytes: a number, or a string with a unit (\"64MiB\", \"1GiB\")"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_field_value_and_rule() {
        let q = |request, limit| Quota::new(request, limit);
        assert_eq!(
            q(0.8, 0.5).validate("quota").unwrap_err().to_string(),
            "quota.request = 0.8: must not exceed quota.limit (0.5)"
        );
        assert_eq!(
            q(0.0, 1.0).validate("quota").unwrap_err().field,
            "quota.request"
        );
        assert_eq!(
            q(0.5, 1.5).validate("quota").unwrap_err().field,
            "quota.limit"
        );
        assert!(q(f64::NAN, 1.0).validate("quota").is_err());
        let capped = Quota {
            memory: Some(0),
            ..q(0.1, 0.2)
        };
        assert_eq!(capped.validate("q").unwrap_err().field, "q.memory");
    }

    #[test]
    fn memory_reads_sizes_and_the_agent_s_old_name() {
        let a: Quota =
            serde_json::from_str(r#"{"request":0.1,"limit":0.2,"memory":"1GiB"}"#).unwrap();
        assert_eq!(a.memory, Some(1 << 30));
        let b: Quota =
            serde_json::from_str(r#"{"request":0.1,"limit":0.2,"memory_bytes":4096}"#).unwrap();
        assert_eq!(b.memory, Some(4096));
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"request":0.1,"limit":0.2,"memory":4096}"#
        );
        let e = serde_json::from_str::<Quota>(r#"{"request":0.1,"limit":0.2,"memory":-1}"#);
        assert!(e.unwrap_err().to_string().contains("must not be negative"));
    }
}
