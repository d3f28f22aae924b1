//! The operator's CustomResourceDefinitions on a real API server.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

/// How long [`install_crds`] waits for each CRD to be Established.
pub const ESTABLISHED_WAIT: Duration = Duration::from_secs(60);

/// Installs every CRD of `workerpool_api::all_crds()` by server-side apply as `field_manager`
/// (forced; they are too large for the last-applied annotation of a client-side apply) and
/// waits until each is Established; panics when the API server rejects one or one is not
/// Established within [`ESTABLISHED_WAIT`].
pub async fn install_crds(client: &Client, field_manager: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(field_manager).force();
    let crds = workerpool_api::all_crds();
    for crd in &crds {
        let name = crd.name_any();
        if let Err(e) = api.patch(&name, &params, &Patch::Apply(crd)).await {
            panic!("the API server rejected CRD {name}: {e}");
        }
    }
    for crd in &crds {
        let name = crd.name_any();
        let deadline = Instant::now() + ESTABLISHED_WAIT;
        loop {
            let (established, seen) = match api.get(&name).await {
                Ok(c) => {
                    let conds = c.status.and_then(|s| s.conditions).unwrap_or_default();
                    let established = conds
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    let seen = conds
                        .iter()
                        .map(|c| {
                            format!(
                                "{}={} ({})",
                                c.type_,
                                c.status,
                                c.message.as_deref().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    (established, seen)
                }
                Err(e) => (false, format!("get failed: {e}")),
            };
            if established {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "CRD {name} is not Established after {ESTABLISHED_WAIT:?}; conditions: {seen}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
