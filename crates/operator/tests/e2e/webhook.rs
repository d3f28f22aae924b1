//! A mutating admission webhook served by the test, as a service mesh's injector is: Istio's
//! `holdApplicationUntilProxyStarts` and Linkerd's `proxy-await` put the proxy *first* in
//! `spec.containers`, before the application's own containers.
//!
//! [`ProxyInjector::start`] serves HTTPS on 127.0.0.1 (a port of its own) with a certificate
//! for IP 127.0.0.1 signed by a CA made for the run. It answers AdmissionReview v1 requests for
//! pod CREATE with a JSONPatch that inserts `{"name": "istio-proxy", "image":
//! "proxy-image:latest"}` at `/spec/containers/0`, echoing the request's uid, and remembers the
//! pods it mutated. [`ProxyInjector::register`] creates the cluster-scoped
//! MutatingWebhookConfiguration that sends it the pods of one namespace with one label
//! (`failurePolicy: Fail`), removed by [`Registration::remove`] or, when the scenario fails
//! first, when the [`Registration`] is dropped: the API server must not keep a webhook that
//! points at a port nobody serves.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::harness::{FIELD_MANAGER, NAMESPACE_LABEL, Observe, ensure};

/// The container the webhook inserts first.
pub const PROXY: &str = "istio-proxy";
/// Its image.
pub const PROXY_IMAGE: &str = "proxy-image:latest";
/// The webhook's name in its configuration (a qualified name, as the API requires).
const WEBHOOK: &str = "proxy-injector.e2e.quickube.com";

/// The pods the webhook mutated, as `<namespace>/<name>`.
type Seen = Arc<Mutex<Vec<String>>>;

/// The webhook's HTTPS server; stops when dropped.
pub struct ProxyInjector {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The PEM of the CA that signed its certificate (the configuration's `caBundle`).
    ca_pem: String,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProxyInjector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA made for the run and a server certificate for IP 127.0.0.1 signed by it: (the CA's
/// PEM, the server certificate, its key).
fn certificates() -> Result<(String, CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let ca_key = KeyPair::generate().obs("cannot make the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).obs("CA parameters")?;
    ca.distinguished_name
        .push(DnType::CommonName, "workerpool e2e webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).obs("cannot sign the CA")?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().obs("cannot make the server key")?;
    let mut server = CertificateParams::default();
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let cert = server
        .signed_by(&key, &issuer)
        .obs("cannot sign the server certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((ca_cert.pem(), cert.der().clone(), key))
}

/// The answer to one AdmissionReview: the JSONPatch for a pod CREATE, nothing otherwise.
fn review(body: &[u8], seen: &Seen) -> Result<Value, String> {
    let review: Value = serde_json::from_slice(body).obs("not JSON")?;
    let request = &review["request"];
    let uid = request["uid"]
        .as_str()
        .ok_or_else(|| format!("no request.uid in {review}"))?;
    let mut response = json!({"uid": uid, "allowed": true});
    let object = &request["object"];
    let pod_create = request["operation"] == "CREATE"
        && request["resource"]["resource"] == "pods"
        && request["subResource"]
            .as_str()
            .unwrap_or_default()
            .is_empty();
    let has_proxy = object["spec"]["containers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY));
    if pod_create && !has_proxy {
        let patch = json!([{"op": "add", "path": "/spec/containers/0",
                            "value": {"name": PROXY, "image": PROXY_IMAGE}}]);
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(STANDARD.encode(patch.to_string()));
        let name = request["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .or_else(|| object["metadata"]["name"].as_str())
            .unwrap_or("<generated>");
        let ns = request["namespace"].as_str().unwrap_or_default();
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{ns}/{name}"));
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

async fn mutate(
    State(seen): State<Seen>,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match review(&body, &seen) {
        Ok(answer) => (StatusCode::OK, json, answer.to_string()),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json,
            json!({"error": e}).to_string(),
        ),
    }
}

/// Accepts TLS connections and serves each over HTTP/1 until aborted (the connections with it).
async fn serve(listener: tokio::net::TcpListener, acceptor: TlsAcceptor, router: Router) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("e2e: the webhook could not accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        connections.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("e2e: TLS handshake with the webhook failed: {e}");
                    return;
                }
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                .await;
        });
    }
}

impl ProxyInjector {
    /// Starts the HTTPS server on 127.0.0.1, on a port the system picks.
    pub async fn start() -> Result<Self, String> {
        let (ca_pem, cert, key) = certificates()?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .obs("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .obs("the webhook's certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .obs("cannot listen on 127.0.0.1")?;
        let port = listener.local_addr().obs("the webhook's address")?.port();
        let seen: Seen = Arc::default();
        let router = Router::new()
            .route("/mutate", post(mutate))
            .with_state(seen.clone());
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(config)), router));
        Ok(Self {
            port,
            ca_pem,
            seen,
            task,
        })
    }

    /// The pods it mutated so far, as `<namespace>/<name>`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Creates the MutatingWebhookConfiguration `wpo-e2e-proxy-injector-<ns>` that sends this
    /// server the creations of the pods of namespace `ns` labelled `label`=`value`.
    pub async fn register(
        &self,
        client: &Client,
        ns: &str,
        (label, value): (&str, &str),
    ) -> Result<Registration, String> {
        let name = format!("wpo-e2e-proxy-injector-{ns}");
        let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name, "labels": {NAMESPACE_LABEL: FIELD_MANAGER}},
            "webhooks": [{
                "name": WEBHOOK,
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{}/mutate", self.port),
                    "caBundle": STANDARD.encode(&self.ca_pem),
                },
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "objectSelector": {"matchLabels": {label: value}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 5,
            }],
        }))
        .obs("MutatingWebhookConfiguration")?;
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        api.create(&PostParams::default(), &config)
            .await
            .obs(&format!(
                "cannot create MutatingWebhookConfiguration {name}"
            ))?;
        Ok(Registration {
            api,
            name,
            removed: false,
        })
    }
}

/// Whether the API server calls the webhook for a pod of namespace `ns` labelled
/// `label`=`value`: a dry-run creation must come back with [`PROXY`] first (the configuration
/// takes a moment to reach the API server's admission chain).
pub async fn injects(
    client: &Client,
    ns: &str,
    (label, value): (&str, &str),
) -> Result<(), String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let probe: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "webhook-probe", "labels": {label: value}},
        "spec": {"containers": [{"name": "worker", "image": "worker-image:latest"}]},
    }))
    .obs("probe pod")?;
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    let created = api
        .create(&params, &probe)
        .await
        .obs("dry-run creation of a labelled pod")?;
    let names = container_names(&created);
    ensure(names.first().map(String::as_str) == Some(PROXY), || {
        format!("the dry-run pod came back with containers {names:?}")
    })
}

/// The names of `pod`'s containers, in order.
pub fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect()
}

/// The webhook's configuration in the API server; deleted by [`Registration::remove`], else
/// when dropped.
pub struct Registration {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
    removed: bool,
}

impl Registration {
    /// Deletes the configuration.
    pub async fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!(
                "cannot delete MutatingWebhookConfiguration {}: {e}",
                self.name
            )),
        }
    }
}

impl Drop for Registration {
    /// A scenario that failed first: the delete runs on a thread of its own with a runtime and
    /// a client of its own, whatever the state of the test's runtime.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let name = self.name.clone();
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .obs("runtime")?;
            runtime.block_on(async {
                let client = Client::try_default().await.obs("client")?;
                let api: Api<MutatingWebhookConfiguration> = Api::all(client);
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => eprintln!("e2e: deleted MutatingWebhookConfiguration {}", self.name),
            Ok(Err(e)) => eprintln!(
                "e2e: could not delete MutatingWebhookConfiguration {}: {e}",
                self.name
            ),
            Err(_) => eprintln!(
                "e2e: the deletion of MutatingWebhookConfiguration {} panicked",
                self.name
            ),
        }
    }
}

/// The names of the pods of `pods` whose first container is not [`PROXY`].
pub fn without_proxy_first(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| container_names(p).first().map(String::as_str) != Some(PROXY))
        .map(|p| format!("{} {:?}", p.name_any(), container_names(p)))
        .collect()
}
