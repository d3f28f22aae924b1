//! Schema helpers shared by the CRDs.

use k8s_openapi::api::core::v1::PodSpec;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::storm::{CLUSTER_RESERVED_KEYS, POOL_RESERVED_KEYS, ReservedKey};

/// A map of arbitrary values (Storm configuration): structural, with unknown fields kept.
pub fn preserve_unknown_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A storm.yaml key as CEL names the property: Kubernetes escapes `.` as `__dot__` (and `_` runs,
/// `-`, `/` likewise).
pub fn cel_property(key: &str) -> String {
    key.replace("__", "__underscores__")
        .replace('.', "__dot__")
        .replace('-', "__dash__")
        .replace('/', "__slash__")
}

/// The schema of a key the rules look at: a list for the list-valued keys, else an integer or a
/// string (any such value is refused anyway; the type only lets CEL declare the field).
fn reserved_property(key: &str) -> serde_json::Value {
    if LIST_KEYS.contains(&key) {
        serde_json::json!({"type": "array", "items": {"x-kubernetes-int-or-string": true}})
    } else {
        serde_json::json!({"x-kubernetes-int-or-string": true})
    }
}

/// Reserved keys whose value is a list in Storm.
const LIST_KEYS: [&str; 3] = [
    "storm.zookeeper.servers",
    "nimbus.seeds",
    "supervisor.slots.ports",
];

/// A map of Storm configuration entries (unknown fields kept) that declares the keys of
/// `reserved` and `declared` as properties, so that CEL can see them (a rule cannot look into
/// the fields an object merely preserves); each key of `reserved` is refused with a message
/// naming what to use instead.
fn storm_config_map(field: &str, reserved: &[ReservedKey], declared: &[&str]) -> Schema {
    let mut properties = serde_json::Map::new();
    for key in reserved
        .iter()
        .map(|r| r.key)
        .chain(declared.iter().copied())
    {
        properties.insert(key.to_string(), reserved_property(key));
    }
    let rules: Vec<serde_json::Value> = reserved
        .iter()
        .map(|r| {
            serde_json::json!({
                "rule": format!("!has(self.{})", cel_property(r.key)),
                "message": r.message(field),
            })
        })
        .collect();
    json_schema!({
        "type": "object",
        "properties": properties,
        "x-kubernetes-preserve-unknown-fields": true,
        "x-kubernetes-validations": rules,
    })
}

/// A StormCluster's `stormConfig`: any storm.yaml entry but the keys the operator wires
/// ([`CLUSTER_RESERVED_KEYS`]); `nimbus.thrift.port` is declared for the Managed-only rule.
pub fn cluster_storm_config(_: &mut SchemaGenerator) -> Schema {
    storm_config_map(
        "stormConfig",
        CLUSTER_RESERVED_KEYS,
        &["nimbus.thrift.port"],
    )
}

/// A StormWorkerPool's `workerConfig`: any storm.yaml entry but the keys the operator wires or
/// takes from the cluster ([`POOL_RESERVED_KEYS`]).
pub fn pool_worker_config(_: &mut SchemaGenerator) -> Schema {
    storm_config_map("workerConfig", POOL_RESERVED_KEYS, &[])
}

/// `zookeeperServers`: 1 to 32 host names, none with a `:port` (Storm appends
/// `storm.zookeeper.port` to each).
pub fn zookeeper_servers(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": "!self.contains(':')",
                "message": crate::storm::ZOOKEEPER_PORT_MESSAGE,
            }],
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_names_of_storm_keys_are_escaped_as_kubernetes_does() {
        assert_eq!(cel_property("ui.port"), "ui__dot__port");
        assert_eq!(
            cel_property("storm.log4j2.conf.dir"),
            "storm__dot__log4j2__dot__conf__dot__dir"
        );
        assert_eq!(
            cel_property("a__b-c/d"),
            "a__underscores__b__dash__c__slash__d"
        );
    }
}
