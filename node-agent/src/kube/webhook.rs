//! The cluster component's mutating admission webhook: on a pod's CREATE,
//! a pod whose `VpcIPClaim` holds a static address in zone Z gets a
//! required node affinity for zone Z (`zone_affinity.rs`), so the
//! scheduler places it where its IP can follow it, and says in its events
//! why when no node of Z fits. A pod without such a claim is left as it is.
//!
//! - Served over HTTPS on every replica (not only the leader), from the
//!   claims' and nodes' informer caches: an answer never waits on the API
//!   server. It never denies: any trouble answers "allowed, no patch", and
//!   the configuration's `failurePolicy: Ignore` does the same when this
//!   component is down.
//! - Its TLS is the project's own: a CA and a serving certificate for the
//!   Service's DNS names, made once and kept in a Secret (restarts and
//!   replicas reuse them), the CA put into the webhook configuration's
//!   `caBundle` by server-side apply (and put back if it is removed).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tracing::{debug, info, warn};

use super::crd::VpcIPClaim;
use super::zone_affinity::{ZONE_LABEL, claim_zone, zone_patch};

/// The field manager of the component's writes of the webhook's objects.
const MANAGER: &str = "vpc-cni-cluster";
/// The largest admission review read.
const MAX_BODY: usize = 4 << 20;
/// How long a client may take to send a request's headers, and then its
/// body: the port is reachable from every pod, so a slow or silent client
/// must not hold a connection open.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; past it a new one is closed at once (the
/// API server retries, and its connections are few and kept alive).
const MAX_CONNECTIONS: usize = 128;

/// Settings of the webhook.
#[derive(Clone, Debug)]
pub struct Options {
    /// The port it listens on (all addresses).
    pub port: u16,
    /// The namespace of its Service and Secret.
    pub namespace: String,
    /// The Service the API server calls it by.
    pub service: String,
    /// The Secret holding its CA and serving certificate.
    pub secret: String,
    /// The `MutatingWebhookConfiguration` whose `caBundle` it keeps.
    pub configuration: String,
    /// The webhook's name in that configuration.
    pub webhook: String,
}

/// A CA and a serving certificate with its key, PEM encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The CA's certificate (the `caBundle`).
    pub ca: String,
    /// The serving certificate.
    pub cert: String,
    /// The serving certificate's private key.
    pub key: String,
}

/// The DNS names the API server may dial a Service by.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

/// A new CA and a certificate for `names` it signed, valid from a year
/// before `year` to ten years after (a `kubectl delete secret` and a
/// restart make new ones).
pub fn issue(names: &[String], year: i32) -> Result<Material, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "vpc-cni webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        leaf.distinguished_name.push(DnType::CommonName, first);
    }
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Material {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A TLS server configuration serving `material`'s certificate.
pub fn server_config(material: &Material) -> Result<ServerConfig, String> {
    let cert = CertificateDer::from_pem_slice(material.cert.as_bytes())
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(material.key.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| format!("serving certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The answer to an admission review of a pod's creation: always allowed;
/// patched when `claim_of(namespace, name)` pins the pod to a zone
/// (`node_zone` gives a node's zone, for a claim on the move). Also
/// returns the zone, for the log.
pub fn admit(
    review: &Value,
    claim_of: impl Fn(&str, &str) -> Option<Arc<VpcIPClaim>>,
    node_zone: impl Fn(&str) -> Option<String>,
) -> (Value, Option<String>) {
    let request = &review["request"];
    let mut response = json!({"uid": request["uid"], "allowed": true});
    let mut zone = None;
    if let Ok(pod) = serde_json::from_value::<Pod>(request["object"].clone()) {
        let namespace = request["namespace"].as_str().unwrap_or_default();
        let name = pod
            .metadata
            .name
            .as_deref()
            .or(request["name"].as_str())
            .unwrap_or_default();
        if !name.is_empty()
            && let Some(claim) = claim_of(namespace, name)
            && let Some(pinned) = claim_zone(&claim, node_zone)
        {
            let ops = zone_patch(&pod, &pinned);
            if !ops.is_empty() {
                let patch = serde_json::to_vec(&ops).unwrap_or_default();
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            }
            zone = Some(pinned.zone);
        }
    }
    (
        json!({
            "apiVersion": review["apiVersion"].as_str().unwrap_or("admission.k8s.io/v1"),
            "kind": "AdmissionReview",
            "response": response,
        }),
        zone,
    )
}

fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

fn material_of(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let material = Material {
        ca: text("ca.crt")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
    };
    server_config(&material).is_ok().then_some(material)
}

/// The webhook's TLS material: the Secret's, else made now and stored (of
/// two replicas making it at once, the first to create the Secret wins
/// and the other uses its material).
async fn tls_material(client: &Client, options: &Options) -> Result<Material, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &options.namespace);
    let found = secrets
        .get_opt(&options.secret)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(material) = found.as_ref().and_then(material_of) {
        return Ok(material);
    }
    let names = service_names(&options.service, &options.namespace);
    let material = issue(&names, current_year()).map_err(|e| format!("certificates: {e}"))?;
    let mut secret = Secret {
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    };
    secret.metadata.name = Some(options.secret.clone());
    secret.metadata.labels = Some(
        [(
            "app.kubernetes.io/part-of".to_string(),
            "vpc-cni".to_string(),
        )]
        .into(),
    );
    secret.data = Some(
        [
            ("ca.crt", &material.ca),
            ("tls.crt", &material.cert),
            ("tls.key", &material.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
        .collect(),
    );
    let written = match found {
        // There but unusable: replaced, as it was read.
        Some(old) => {
            secret.metadata.resource_version = old.metadata.resource_version;
            secrets
                .replace(&options.secret, &PostParams::default(), &secret)
                .await
        }
        None => secrets.create(&PostParams::default(), &secret).await,
    };
    match written {
        Ok(_) => {
            info!(secret = %options.secret, names = ?names, "webhook CA and serving certificate made");
            Ok(material)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let stored = secrets
                .get(&options.secret)
                .await
                .map_err(|e| e.to_string())?;
            material_of(&stored).ok_or_else(|| format!("{} is unusable", options.secret))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the CA into the webhook's `caBundle` (server-side apply of that
/// one field; the rest of the configuration is the installer's).
async fn apply_ca_bundle(client: &Client, options: &Options, ca: &str) -> Result<(), String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api
        .get(&options.configuration)
        .await
        .map_err(|e| e.to_string())?;
    let has_it = current.webhooks.iter().flatten().any(|w| {
        w.name == options.webhook
            && w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(ca.as_bytes())
    });
    if has_it {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": options.configuration},
        "webhooks": [{
            "name": options.webhook,
            "clientConfig": {"caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
        }],
    });
    api.patch(
        &options.configuration,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| e.to_string())?;
    info!(configuration = %options.configuration, webhook = %options.webhook, "caBundle written");
    Ok(())
}

/// What a connection's handler reads.
struct Caches {
    claims: Store<VpcIPClaim>,
    nodes: Store<Node>,
}

impl Caches {
    fn answer(&self, review: &Value) -> Value {
        let claim_of =
            |namespace: &str, name: &str| self.claims.get(&ObjectRef::new(name).within(namespace));
        let node_zone = |node: &str| {
            self.nodes
                .get(&ObjectRef::new(node))
                .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned())
        };
        let (answer, zone) = admit(review, claim_of, node_zone);
        let request = &review["request"];
        if let Some(zone) = zone {
            info!(
                namespace = request["namespace"].as_str().unwrap_or_default(),
                pod = request["name"].as_str().unwrap_or_default(),
                %zone,
                patched = answer["response"]["patch"].is_string(),
                "static pod required in its claim's zone"
            );
        }
        answer
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn handle(
    caches: Arc<Caches>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => Ok(reply(StatusCode::OK, b"ok".to_vec())),
        (&Method::POST, "/zone") => {
            let body = Limited::new(request.into_body(), MAX_BODY).collect();
            let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => {
                    return Ok(reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes()));
                }
                Err(_) => {
                    return Ok(reply(
                        StatusCode::REQUEST_TIMEOUT,
                        b"the body was not sent in time".to_vec(),
                    ));
                }
            };
            let Ok(review) = serde_json::from_slice::<Value>(&body) else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    b"not an AdmissionReview".to_vec(),
                ));
            };
            let answer = caches.answer(&review);
            let mut response = reply(
                StatusCode::OK,
                serde_json::to_vec(&answer).unwrap_or_default(),
            );
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            Ok(response)
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, Vec::new())),
    }
}

/// Retries `f` every 5 s until it succeeds, logging each failure.
async fn until_done<T, F: Future<Output = Result<T, String>>>(
    what: &'static str,
    mut f: impl FnMut() -> F,
) -> T {
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => warn!(what, error = %e, "webhook setup failed; retrying in 5 s"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Serves the webhook until the process is stopped: TLS material, the
/// caches, then the listener; the `caBundle` is checked every minute.
pub async fn serve(client: Client, options: Options) -> Result<(), String> {
    let material = until_done("tls", || tls_material(&client, &options)).await;
    let config = server_config(&material)?;
    let (claims, _) = super::cache(
        Api::<VpcIPClaim>::all(client.clone()),
        watcher::Config::default(),
        "webhook claims",
    );
    let (nodes, _) = super::cache(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        "webhook nodes",
    );
    {
        let (client, options, ca) = (client.clone(), options.clone(), material.ca.clone());
        tokio::spawn(async move {
            loop {
                until_done("caBundle", || apply_ca_bundle(&client, &options, &ca)).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }
    // Not listening (not Ready, no endpoint) before the caches are: an
    // empty cache would let a static pod through unpinned.
    claims
        .wait_until_ready()
        .await
        .map_err(|e| format!("claims cache: {e}"))?;
    nodes
        .wait_until_ready()
        .await
        .map_err(|e| format!("nodes cache: {e}"))?;
    let listener = crate::listen::bind_when_free(("0.0.0.0", options.port), "zone webhook")
        .await
        .map_err(|e| format!("webhook port {}: {e}", options.port))?;
    info!(port = options.port, service = %options.service, "zone webhook serving");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let caches = Arc::new(Caches { claims, nodes });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, max = MAX_CONNECTIONS, "webhook connections at their cap; closed");
            continue;
        };
        let (acceptor, caches) = (acceptor.clone(), Arc::clone(&caches));
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
            };
            if let Err(e) = serve_http(tls, caches).await {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection: each request's headers within
/// [`READ_TIMEOUT`], its body within as long again.
async fn serve_http<I>(io: I, caches: Arc<Caches>) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |r| handle(Arc::clone(&caches), r));
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{DeletePolicy, VpcIPClaimSpec, VpcIPClaimStatus};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    fn claim() -> Arc<VpcIPClaim> {
        let mut c = VpcIPClaim::new(
            "web-0",
            VpcIPClaimSpec {
                delete_policy: DeletePolicy::Never,
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("default".into());
        c.status = Some(VpcIPClaimStatus {
            phase: "Reserved".into(),
            ip: "10.0.16.7".into(),
            node: "ins-1".into(),
            zone: "zone-a".into(),
            ..Default::default()
        });
        Arc::new(c)
    }

    fn review(name: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "operation": "CREATE",
                "namespace": "default",
                "name": name,
                "object": {"metadata": {"name": name}, "spec": {"containers": []}},
            },
        })
    }

    fn web_0(namespace: &str, name: &str) -> Option<Arc<VpcIPClaim>> {
        (namespace == "default" && name == "web-0").then(claim)
    }

    #[test]
    fn a_pod_with_a_static_claim_is_patched_and_one_without_is_not() {
        let (answer, zone) = admit(&review("web-0"), web_0, |_| None);
        assert_eq!(zone.as_deref(), Some("zone-a"));
        let response = &answer["response"];
        assert_eq!(response["uid"], "u-1");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("patch"))
            .expect("base64");
        let ops: Vec<Value> = serde_json::from_slice(&patch).expect("json patch");
        assert_eq!(ops[0]["path"], "/spec/affinity");

        let (answer, zone) = admit(&review("other-0"), web_0, |_| None);
        assert_eq!(zone, None);
        assert_eq!(answer["response"], json!({"uid": "u-1", "allowed": true}));
    }

    #[test]
    fn a_request_that_cannot_be_read_is_allowed_unchanged() {
        let (answer, _) = admit(
            &json!({"request": {"uid": "u-2", "object": 7}}),
            web_0,
            |_| None,
        );
        assert_eq!(answer["response"], json!({"uid": "u-2", "allowed": true}));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let caches = Arc::new(Caches {
            claims: kube::runtime::reflector::store::Writer::default().as_reader(),
            nodes: kube::runtime::reflector::store::Writer::default().as_reader(),
        });
        let (mut client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(serve_http(server, caches));
        client
            .write_all(b"POST /zone HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        // Nothing more is sent: the server gives up after READ_TIMEOUT
        // (the paused clock runs ahead), not never.
        let ended = tokio::time::timeout(READ_TIMEOUT * 2, served).await;
        assert!(ended.is_ok(), "the connection is still served");
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
    }

    #[tokio::test]
    async fn the_serving_certificate_is_trusted_through_the_ca_for_the_service_name() {
        let names = service_names("vpc-cni-webhook", "vpc-cni-system");
        let material = issue(&names, 2026).expect("issue");
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&material).expect("server")));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(material.ca.as_bytes()).expect("ca"))
            .expect("root");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 << 10);
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(b).await.expect("accept");
            tls.write_all(b"hello").await.expect("write");
            tls.shutdown().await.expect("shutdown");
        });
        let name = rustls::pki_types::ServerName::try_from("vpc-cni-webhook.vpc-cni-system.svc")
            .expect("name");
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(name, a)
            .await
            .expect("the CA vouches for the service name");
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello");
        server.await.expect("server");
    }
}
