//! The `Function` custom resource (`dilu.io/v1alpha1`, namespaced): its spec is a `dilu-api` function spec
//! without the name (which is `metadata.name`), its status what the controller reports. The
//! CustomResourceDefinition is generated from the `dilu-api` types ([`definition`]); `deploy/crd.yaml` is
//! its rendering ([`definition_yaml`]) and a test fails when the file is stale.

use std::borrow::Cow;
use std::collections::BTreeMap;

use dilu_api::{FieldError, FunctionSpec, Quota};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::TypeMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{GROUP, VERSION};

/// The resource's kind.
pub const KIND: &str = "Function";
/// Its plural (the API path segment).
pub const PLURAL: &str = "functions";

/// A `Function` object as the API server holds it. The spec is kept as written and read with
/// [`Function::function_spec`], so that a bad spec gets the same field errors as `dilu deploy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Function {
    /// `apiVersion` and `kind`.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub types: Option<TypeMeta>,
    /// Name, namespace, labels, finalizers.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The function spec without its name.
    #[serde(default)]
    pub spec: serde_json::Map<String, serde_json::Value>,
    /// What the controller reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FunctionStatus>,
}

impl kube::Resource for Function {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Function {
    /// A new object for `spec` in `namespace` (what `kubectl apply` of the spec file creates).
    pub fn new(namespace: &str, spec: &FunctionSpec) -> Result<Function, FieldError> {
        let mut body = match serde_json::to_value(spec) {
            Ok(serde_json::Value::Object(body)) => body,
            _ => return Err(FieldError::new("spec", "(as given)", "must be a mapping")),
        };
        body.remove("name");
        Ok(Function {
            types: Some(TypeMeta {
                api_version: format!("{GROUP}/{VERSION}"),
                kind: KIND.into(),
            }),
            metadata: ObjectMeta {
                name: Some(spec.name.clone()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            spec: body,
            status: None,
        })
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The function spec: `metadata.name` and the spec's fields, checked by the rules `dilu deploy` applies.
    pub fn function_spec(&self) -> Result<FunctionSpec, FieldError> {
        dilu_api::spec_of_manifest(serde_json::json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": { "name": self.name() },
            "spec": self.spec,
        }))
    }

    /// Whether the object is being deleted.
    pub fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

/// What the controller reports on a `Function`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The function's phase (`profiling`, `ready`, `failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Instances that serve.
    #[serde(default)]
    pub ready_instances: u32,
    /// Instances that exist.
    #[serde(default)]
    pub instances: u32,
    /// The quota profiling chose, or the spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<StatusQuota>,
    /// The batch profiling chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    /// Requests per second one instance serves at its quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_rps: Option<f64>,
    /// Where to send inference requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `Ready`, `Profiled`, `SpecValid`: the standard condition list.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A quota as the status shows it (the spec's `quota` with the memory cap in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusQuota {
    /// Guaranteed share of the device.
    pub request: f64,
    /// Most the instance may use.
    pub limit: f64,
    /// Memory cap in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

impl From<Quota> for StatusQuota {
    fn from(q: Quota) -> StatusQuota {
        StatusQuota {
            request: q.request,
            limit: q.limit,
            memory: q.memory,
        }
    }
}

/// A status condition, as Kubernetes' own resources write them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// `Ready`, `Profiled`, `SpecValid`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Words for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
}

/// Why the definition could not be generated (a schema Kubernetes would refuse).
#[derive(Debug, thiserror::Error)]
#[error("generating the Function CustomResourceDefinition: {0}")]
pub struct DefinitionError(String);

fn schema_of<T: JsonSchema>() -> Result<serde_json::Value, DefinitionError> {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    serde_json::to_value(generator.into_root_schema_for::<T>())
        .map_err(|e| DefinitionError(e.to_string()))
}

/// Drops what Kubernetes does not accept in a CRD schema: `$schema`, `title`, empty defaults, and JSON
/// Schema's `format`s it does not know (`uint32`, `double`, …, which it would only warn about).
fn tidy(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("$schema");
            map.remove("title");
            // A default of null (what schemars writes for `#[serde(default)]` fields without one) or of "" is
            // refused by the API server ("must be of type string: null").
            if matches!(map.get("default"), Some(serde_json::Value::Null))
                || map.get("default") == Some(&serde_json::Value::String(String::new()))
            {
                map.remove("default");
            }
            if let Some(serde_json::Value::String(f)) = map.get("format")
                && !matches!(f.as_str(), "int32" | "int64" | "float" | "double")
            {
                map.remove("format");
            }
            // Kubernetes' int-or-string carries no type of its own.
            if map.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true)) {
                map.remove("type");
            }
            for v in map.values_mut() {
                tidy(v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// The Function CRD's OpenAPI v3 schema: the spec from `dilu_api::FunctionSpec` without `name`, the status
/// from [`FunctionStatus`].
pub fn schema() -> Result<JSONSchemaProps, DefinitionError> {
    let mut spec = schema_of::<FunctionSpec>()?;
    if let Some(map) = spec.as_object_mut() {
        if let Some(serde_json::Value::Object(props)) = map.get_mut("properties") {
            props.remove("name");
        }
        if let Some(serde_json::Value::Array(required)) = map.get_mut("required") {
            required.retain(|r| r != "name");
            if required.is_empty() {
                map.remove("required");
            }
        }
        map.insert(
            "description".into(),
            "The function: what `dilu deploy` takes, without `name` (which is metadata.name)."
                .into(),
        );
    }
    let mut status = schema_of::<FunctionStatus>()?;
    if let Some(map) = status.as_object_mut() {
        map.insert(
            "description".into(),
            "What the Dilu controller reports.".into(),
        );
    }
    let mut root = serde_json::json!({
        "type": "object",
        "description": "A Dilu function: a deep-learning inference or training function served on shared GPUs.",
        "properties": {
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    });
    tidy(&mut root);
    serde_json::from_value(root).map_err(|e| DefinitionError(e.to_string()))
}

fn column(
    name: &str,
    type_: &str,
    path: &str,
    description: &str,
) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path: path.into(),
        description: Some(description.into()),
        ..CustomResourceColumnDefinition::default()
    }
}

/// The CustomResourceDefinition of `Function`.
pub fn definition() -> Result<CustomResourceDefinition, DefinitionError> {
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{PLURAL}.{GROUP}")),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "dilu".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: KIND.into(),
                plural: PLURAL.into(),
                singular: Some("function".into()),
                short_names: Some(vec!["fn".into()]),
                categories: Some(vec!["dilu".into()]),
                list_kind: Some(format!("{KIND}List")),
            },
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema()?),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                    scale: None,
                }),
                additional_printer_columns: Some(vec![
                    column("Kind", "string", ".spec.kind", "What the function does"),
                    column("Phase", "string", ".status.phase", "The function's phase"),
                    column(
                        "Ready",
                        "integer",
                        ".status.readyInstances",
                        "Instances that serve",
                    ),
                    column(
                        "Request",
                        "number",
                        ".status.quota.request",
                        "Guaranteed share of a device",
                    ),
                    column("URL", "string", ".status.url", "Where requests go"),
                    column(
                        "Age",
                        "date",
                        ".metadata.creationTimestamp",
                        "Since the object was created",
                    ),
                ]),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    })
}

/// `deploy/crd.yaml`: the definition as YAML, with a header saying it is generated.
pub fn definition_yaml() -> Result<String, DefinitionError> {
    let crd = definition()?;
    let body = serde_yaml::to_string(&crd).map_err(|e| DefinitionError(e.to_string()))?;
    Ok(format!(
        "# Generated by `dilu kube crd` from the dilu-api spec types: do not edit by hand.\n\
         # A test (dilu-k8s crd::tests) fails when this file differs from what the code generates.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(schema: &JSONSchemaProps) -> &BTreeMap<String, JSONSchemaProps> {
        schema.properties.as_ref().unwrap()
    }

    #[test]
    fn the_schema_follows_the_spec_types() {
        let root = schema().unwrap();
        let spec = &props(&root)["spec"];
        let fields = props(spec);
        for f in [
            "kind", "runtime", "model", "training", "slo_ms", "quota", "scaling", "gateway",
        ] {
            assert!(
                fields.contains_key(f),
                "spec.{f} missing: {:?}",
                fields.keys()
            );
        }
        assert!(!fields.contains_key("name"), "the name is metadata.name");
        let quota = props(&fields["quota"]);
        assert_eq!(quota["memory"].x_kubernetes_int_or_string, Some(true));
        let kind = &fields["kind"];
        let values: Vec<String> = kind
            .enum_
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.0.as_str().unwrap().to_string())
            .collect();
        assert!(values.contains(&"training".to_string()), "{values:?}");
    }

    #[test]
    fn deploy_crd_yaml_is_what_the_code_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crd.yaml");
        let generated = definition_yaml().unwrap();
        if std::env::var_os("DILU_UPDATE_DEPLOY").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "deploy/crd.yaml is stale: rerun this test with DILU_UPDATE_DEPLOY=1 (or `dilu kube crd > deploy/crd.yaml`)"
        );
    }

    #[test]
    fn an_object_gives_back_the_spec_with_field_errors_under_spec() {
        let spec = dilu_api::parse_spec(
            "name: ocr\nkind: inference\nmodel: {path: /m.onnx}\nslo_ms: 100\n",
            dilu_api::SpecFormat::Yaml,
        )
        .unwrap();
        let f = Function::new("default", &spec).unwrap();
        assert_eq!(f.function_spec().unwrap(), spec);
        let mut bad = f.clone();
        bad.spec.insert("slo_ms".into(), serde_json::json!(-1));
        let err = bad.function_spec().unwrap_err();
        assert_eq!(err.field, "spec.slo_ms", "{err}");
    }
}
