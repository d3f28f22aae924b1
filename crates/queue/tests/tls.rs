//! TLS is verified whenever it is used: every adapter (Redis, RabbitMQ AMQP and management API,
//! NATS) refuses a server whose certificate comes from a CA it does not trust, and a connection
//! that asks for TLS never sends credentials in plain text, even to a server that offers none.
//!
//! The test servers run on 127.0.0.1 (a certificate signed by a throw-away CA, made for these
//! tests only); the management API test also uses the real local RabbitMQ on 5672.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rustls::AlertDescription;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use workerpool_queue::{BrokerConfig, NatsConfig, RabbitMqConfig, RedisConfig, amqp_url, connect};

/// A credential that must never reach the test servers in plain text.
const CANARY: &str = "canary-tls-7d41";

/// Server certificate for `localhost` and 127.0.0.1, valid until 2126, signed by [`CA`].
const LEAF: &str = "
-----BEGIN CERTIFICATE-----
MIIBxzCCAW2gAwIBAgIUSmkSUlyNEhVaQdWREiGI6a2B9cowCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdW50cnVzdGVkIHRlc3QgQ0EwIBcNMjYxMTI2MTQ1MjQzWhgP
MjEyNjExMDIxNDUyNDNaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABADgXFZEOEcyRVmwMqXgvWuwjFt8RuIYb1X+mPEaWSGR
G9+r7r2UAWKBtvh0+kvSAH09K8KPgzqIlQyjo+BEQKGjgZIwgY8wDAYDVR0TAQH/
BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwGgYDVR0R
BBMwEYIJbG9jYWxob3N0hwR/AAABMB0GA1UdDgQWBBQ3C3d1Z8QcTFB7Y6Yj54wx
Rg2u2DAfBgNVHSMEGDAWgBTkTHdpWtsJmNOAEHIFJM9wtUstADAKBggqhkjOPQQD
AgNIADBFAiEAi8KnwCww1/tCvHA+9W1XrUXnXNxu7YtRktw/QkOKvSICIEPIv54u
khwLXzc11j6ftUZoL1KO2xCGe4XIhMwKvmgN
-----END CERTIFICATE-----
";
/// A CA made for these tests, trusted by nobody (its key was thrown away).
const CA: &str = "
-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUJcuT0+YDr8XuZFKgilL1DUGDWRgwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdW50cnVzdGVkIHRlc3QgQ0EwIBcNMjYxMTI2MTQ1MjQzWhgP
MjEyNjExMDIxNDUyNDNaMBwxGjAYBgNVBAMMEXVudHJ1c3RlZCB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEoRS/nPmaIo3bkurvaSx8KnwzlRgi3dSQ
umJqgGevRl/kxBHYV+vq+5EMd0Kmq7FGdiFoiVY1emN/Cqx5C0H6RqNTMFEwHQYD
VR0OBBYEFORMd2la2wmY04AQcgUkz3C1Sy0AMB8GA1UdIwQYMBaAFORMd2la2wmY
04AQcgUkz3C1Sy0AMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg
J0e7gm0XFDimZlvN6AusJyZmEu8YDe653OFBKImEizcCIQCuzCUv8wsmMdoc7xJS
hU8nigKDxs7p8cLGlFk98aHZ3w==
-----END CERTIFICATE-----
";
/// The key of [`LEAF`] (test only).
const LEAF_KEY: &str = "
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg/BOS89ExPX8spepw
DyxuNfl9JnhuEnzigHkfw2mJSjihRANCAAQA4FxWRDhHMkVZsDKl4L1rsIxbfEbi
GG9V/pjxGlkhkRvfq+69lAFigbb4dPpL0gB9PSvCj4M6iJUMo6PgRECh
-----END PRIVATE KEY-----
";

/// How one handshake with the test server ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The client accepted the certificate.
    Completed,
    /// The client refused it with this alert.
    Rejected(AlertDescription),
    /// Something else (the client hung up, sent no TLS, ...).
    Failed(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config() -> Arc<rustls::ServerConfig> {
    let chain = format!("{LEAF}{CA}");
    let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_slice(LEAF_KEY.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    Arc::new(config)
}

fn handshake(config: &Arc<rustls::ServerConfig>, stream: &mut TcpStream) -> Outcome {
    let mut conn = match rustls::ServerConnection::new(config.clone()) {
        Ok(conn) => conn,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(stream) {
            return match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::AlertReceived(alert)) => Outcome::Rejected(*alert),
                _ => Outcome::Failed(e.to_string()),
            };
        }
    }
    Outcome::Completed
}

/// A TLS server on 127.0.0.1 with the untrusted certificate. `preamble` is written in plain
/// text first (a NATS server's `INFO`). The outcome of every handshake is sent on the channel.
fn untrusted_server(preamble: &'static [u8]) -> (u16, mpsc::Receiver<Outcome>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    let config = server_config();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(preamble);
            if tx.send(handshake(&config, &mut stream)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// A plain-text server on 127.0.0.1 that writes `preamble` and records everything a client
/// sends (for up to 3 s per connection); the bytes of every connection go on the channel.
fn plaintext_server(preamble: &'static [u8]) -> (u16, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = stream.write_all(preamble);
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(seen);
            });
        }
    });
    (port, rx)
}

/// The first handshake's outcome, which must be a refusal of the certificate: an alert
/// naming it, or (clients that hang up without an alert) no completed handshake and a client
/// error that says so.
fn assert_certificate_refused(rx: &mpsc::Receiver<Outcome>, what: &str, client_error: &str) {
    let outcome = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: no TLS handshake reached the test server"));
    let alert = matches!(
        outcome,
        Outcome::Rejected(
            AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
        )
    );
    let hung_up =
        outcome != Outcome::Completed && client_error.contains("invalid peer certificate");
    assert!(
        alert || hung_up,
        "{what}: the client did not refuse the untrusted certificate: {outcome:?} ({client_error})"
    );
}

/// Everything the plain-text server received, which must not hold the credential.
fn assert_no_plaintext_credential(rx: &mpsc::Receiver<Vec<u8>>, what: &str) {
    while let Ok(seen) = rx.recv_timeout(Duration::from_secs(4)) {
        let text = String::from_utf8_lossy(&seen);
        assert!(
            !text.contains(CANARY),
            "{what}: the credential was sent in plain text: {text:?}"
        );
    }
}

const NATS_INFO_TLS: &[u8] = b"INFO {\"server_id\":\"test\",\"server_name\":\"test\",\"version\":\"2.10.0\",\"go\":\"go1.22\",\"host\":\"127.0.0.1\",\"port\":4222,\"headers\":true,\"max_payload\":1048576,\"proto\":1,\"tls_required\":true}\r\n";
const NATS_INFO_PLAIN: &[u8] = b"INFO {\"server_id\":\"test\",\"server_name\":\"test\",\"version\":\"2.10.0\",\"go\":\"go1.22\",\"host\":\"127.0.0.1\",\"port\":4222,\"headers\":true,\"max_payload\":1048576,\"proto\":1}\r\n";

fn nats(url: String, tls: bool) -> BrokerConfig {
    BrokerConfig::Nats(NatsConfig {
        url,
        stream: "S".into(),
        user: None,
        password: None,
        token: Some(CANARY.into()),
        tls,
    })
}

#[test]
fn the_test_server_is_accepted_by_a_client_that_trusts_its_ca() {
    // Control: the refusals below come from the missing trust, not from a broken server.
    let (port, rx) = untrusted_server(b"");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(CA.as_bytes()) {
        roots.add(ca.expect("CA")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    while conn.is_handshaking() {
        conn.complete_io(&mut stream).expect("handshake");
    }
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).ok(),
        Some(Outcome::Completed)
    );
}

#[tokio::test]
async fn redis_verifies_the_server_certificate() {
    let (port, rx) = untrusted_server(b"");
    let cfg = BrokerConfig::Redis(RedisConfig {
        host: "localhost".into(),
        port,
        password: Some(CANARY.into()),
        db: 0,
        tls: true,
    });
    let err = connect(&cfg)
        .await
        .err()
        .expect("an untrusted server must be refused");
    assert_eq!(err.category(), "connect", "{err}");
    assert!(!err.to_string().contains(CANARY));
    assert_certificate_refused(&rx, "redis", &err.to_string());
}

#[tokio::test]
async fn rabbitmq_verifies_the_server_certificate() {
    let (port, rx) = untrusted_server(b"");
    let cfg = BrokerConfig::RabbitMq(RabbitMqConfig {
        url: amqp_url("localhost", port, "/", "guest", CANARY, true),
        management_url: None,
    });
    let err = connect(&cfg)
        .await
        .err()
        .expect("an untrusted server must be refused");
    assert!(!err.to_string().contains(CANARY), "{err}");
    assert_certificate_refused(&rx, "rabbitmq", &err.to_string());
}

#[tokio::test]
async fn rabbitmq_management_api_verifies_the_server_certificate() {
    let (port, rx) = untrusted_server(b"");
    let cfg = BrokerConfig::RabbitMq(RabbitMqConfig {
        url: amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false),
        management_url: Some(format!("https://localhost:{port}")),
    });
    let broker = connect(&cfg).await.expect("the local RabbitMQ");
    let err = broker
        .depth("tls-test-queue", &[])
        .await
        .expect_err("an untrusted management API must be refused");
    assert_eq!(err.category(), "connect", "{err}");
    assert_certificate_refused(&rx, "rabbitmq management API", &err.to_string());
}

#[tokio::test]
async fn nats_verifies_the_server_certificate() {
    for (url, tls) in [("nats", true), ("tls", false)] {
        let (port, rx) = untrusted_server(NATS_INFO_TLS);
        let cfg = nats(format!("{url}://localhost:{port}"), tls);
        let err = connect(&cfg)
            .await
            .err()
            .expect("an untrusted server must be refused");
        assert!(!err.to_string().contains(CANARY), "{err}");
        assert_certificate_refused(&rx, &format!("nats {url}:// tls={tls}"), &err.to_string());
    }
}

#[tokio::test]
async fn tls_is_never_skipped_for_a_server_without_it() {
    // Redis and NATS asked for TLS, the server speaks plain text: nothing secret is sent.
    let (port, rx) = plaintext_server(b"");
    let redis = BrokerConfig::Redis(RedisConfig {
        host: "127.0.0.1".into(),
        port,
        password: Some(CANARY.into()),
        db: 0,
        tls: true,
    });
    assert!(connect(&redis).await.is_err());
    assert_no_plaintext_credential(&rx, "redis tls=true");

    let (port, rx) = plaintext_server(NATS_INFO_PLAIN);
    assert!(
        connect(&nats(format!("nats://127.0.0.1:{port}"), true))
            .await
            .is_err()
    );
    assert_no_plaintext_credential(&rx, "nats tls=true");
}

#[tokio::test]
async fn nats_refuses_urls_that_would_skip_tls() {
    // The NATS client puts no TLS on ws:// URLs (and this build has no websocket support, so
    // it would speak plain NATS over TCP): such URLs are refused before any connection.
    for scheme in ["ws", "wss"] {
        let (port, rx) = plaintext_server(NATS_INFO_PLAIN);
        let result = connect(&nats(format!("{scheme}://127.0.0.1:{port}"), true)).await;
        if let Ok(seen) = rx.recv_timeout(Duration::from_secs(1)) {
            panic!(
                "{scheme}:// with tls=true connected in plain text (credential sent: {})",
                String::from_utf8_lossy(&seen).contains(CANARY)
            );
        }
        let err = result.err().expect("a websocket URL must be refused");
        assert_eq!(err.category(), "connect", "{err}");
        assert!(err.to_string().contains("nats:// or tls://"), "{err}");
    }
}
