//! Server-side apply of the operator's objects, with one field manager.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FIELD_MANAGER;
use crate::error::Result;

/// Patch parameters of every apply: the operator's field manager, forcing ownership of the
/// fields it sets.
pub fn params() -> PatchParams {
    params_of(FIELD_MANAGER).force()
}

/// Patch parameters of a server-side apply by `manager`, without forcing. They ask the API
/// server not to check the body for unknown or duplicate fields (`fieldValidation=Ignore`):
/// every body is serialised from a typed object, and the check, a second parse of the body
/// that only produces warnings nobody reads, was 6 % of the API server's CPU at scale.
pub fn params_of(manager: &str) -> PatchParams {
    PatchParams::apply(manager).validation_ignore()
}

/// Applies `object` (server-side) in its namespace and returns what the server stored.
pub async fn apply<K>(api: &Api<K>, object: &K) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = object.name_any();
    Ok(api.patch(&name, &params(), &Patch::Apply(object)).await?)
}

/// Deletes `name` if it exists; returns whether something was deleted.
pub async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<bool>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` to the status subresource of `K` named `name` (server-side apply).
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": status,
    });
    api.patch_status(name, &params(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}
