//! [`Packed`]: a large field kept as its compact JSON text.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value of type `T` kept as its compact JSON text and decoded when it is read.
///
/// For fields that an operator holds for every object in its caches but reads only when it
/// builds something from them: a `k8s-openapi` `PodSpec` with one container takes 3.5 KB as a
/// struct (its `Option` fields are inline, mostly empty) and a few hundred bytes as text.
/// It (de)serializes exactly as `T` does, so the schema and the wire format are `T`'s; the
/// text is always `T`'s own serialization (made by [`Packed::new`] or on decoding), so
/// [`Packed::get`] decodes what was stored.
pub struct Packed<T> {
    json: Box<str>,
    kind: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned + Default> Packed<T> {
    /// Packs `value`.
    pub fn new(value: &T) -> Self {
        Self {
            json: serde_json::to_string(value)
                .unwrap_or_default()
                .into_boxed_str(),
            kind: PhantomData,
        }
    }

    /// The value, decoded from the text. The text was made from a `T`, so it decodes; should
    /// it ever not, this is `T::default()` rather than a panic.
    pub fn get(&self) -> T {
        serde_json::from_str(&self.json).unwrap_or_default()
    }

    /// The compact JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Changes the value: decodes it, lets `edit` change it, and packs it again.
    pub fn edit(&mut self, edit: impl FnOnce(&mut T)) {
        let mut value = self.get();
        edit(&mut value);
        *self = Self::new(&value);
    }
}

impl<T: Serialize + DeserializeOwned + Default> From<T> for Packed<T> {
    fn from(value: T) -> Self {
        Self::new(&value)
    }
}

impl<T: Serialize + DeserializeOwned + Default> Default for Packed<T> {
    fn default() -> Self {
        Self::new(&T::default())
    }
}

impl<T> Clone for Packed<T> {
    fn clone(&self) -> Self {
        Self {
            json: self.json.clone(),
            kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Packed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl<T> fmt::Debug for Packed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

impl<T: Serialize + DeserializeOwned + Default> Serialize for Packed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}

impl<'de, T: Serialize + DeserializeOwned + Default> Deserialize<'de> for Packed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through `T`: a value that is not a `T` is refused here, as an unpacked field would
        // be, and the text is canonical (unknown fields dropped, as `T` drops them).
        let value = T::deserialize(deserializer)?;
        Ok(Self::new(&value))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "worker".into(),
                image: Some("worker:v1".into()),
                ..Container::default()
            }],
            restart_policy: Some("Never".into()),
            ..PodSpec::default()
        }
    }

    #[test]
    fn it_decodes_to_what_was_packed_and_serializes_as_the_value() {
        let packed = Packed::new(&spec());
        assert_eq!(packed.get(), spec());
        assert_eq!(
            serde_json::to_value(&packed).expect("serializes"),
            serde_json::to_value(spec()).expect("serializes")
        );
        assert_eq!(
            packed.json(),
            r#"{"containers":[{"image":"worker:v1","name":"worker"}],"restartPolicy":"Never"}"#
        );
    }

    #[test]
    fn decoding_refuses_what_is_not_the_value_and_drops_unknown_fields() {
        let wrong = serde_json::json!({"containers": "worker"});
        assert!(serde_json::from_value::<Packed<PodSpec>>(wrong).is_err());
        let extra = serde_json::json!({"containers": [{"name": "worker", "colour": "red"}]});
        let packed: Packed<PodSpec> = serde_json::from_value(extra).expect("a pod spec");
        assert_eq!(packed.json(), r#"{"containers":[{"name":"worker"}]}"#);
    }

    #[test]
    fn an_edit_is_packed_again() {
        let mut packed = Packed::new(&spec());
        packed.edit(|s| s.containers[0].image = Some("worker:v2".into()));
        assert_eq!(
            packed.get().containers[0].image.as_deref(),
            Some("worker:v2")
        );
        assert_ne!(packed, Packed::new(&spec()));
    }
}
