//! Schema helpers shared by the CRDs.

use k8s_openapi::api::core::v1::PodSpec;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A map of arbitrary values (Storm configuration): structural, with unknown fields kept.
pub fn preserve_unknown_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A PodSpec whose `containers` may be omitted (a template that only adds e.g. a node selector),
/// with descriptions removed to keep the CRD small.
pub fn optional_pod_spec(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = pod_spec(generator);
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("required");
    }
    schema
}

/// A full PodSpec with descriptions removed to keep the CRD small.
pub fn pod_spec(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = PodSpec::json_schema(generator);
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("description");
        obj.values_mut().for_each(strip_descriptions);
    }
    schema
}

fn strip_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("description").is_some_and(|d| d.is_string()) {
                map.remove("description");
            }
            map.values_mut().for_each(strip_descriptions);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}
