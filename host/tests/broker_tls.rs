//! `amqps://` against the real RabbitMQ, through a TLS terminator the test runs itself (a
//! private CA, a certificate for `localhost`, then plain AMQP to 127.0.0.1:5672): the host
//! connects when it trusts the CA (`?cacertfile=`), and refuses an untrusted certificate
//! with a clear error. The console's https:// to the management API trusts the same, through
//! the same terminator in front of a stand-in for the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use taskgate_host::broker::amqp::{connect, ConnectError};
use taskgate_host::broker::Broker;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::{delete_queue, request, stop_broker, TestDeadLetters};

/// A private CA's certificate (PEM file) and a TLS port that forwards to `target`.
struct Terminator {
    port: u16,
    ca_file: tempfile::NamedTempFile,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn terminator() -> Terminator {
    terminator_to(SocketAddr::from(([127, 0, 0, 1], 5672))).await
}

async fn terminator_to(target: SocketAddr) -> Terminator {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    Terminator {
        port,
        ca_file,
        task,
    }
}

#[tokio::test]
async fn amqps_connects_when_the_ca_is_trusted_and_publishes_are_confirmed() {
    let tls = terminator().await;
    let url = format!(
        "amqps://guest:guest@localhost:{}/%2f?cacertfile={}",
        tls.port,
        tls.ca_file.path().display()
    );
    let queue = format!("taskgate-test.tls.{}", Uuid::new_v4());
    let dead_letters = TestDeadLetters::new();
    let broker = dead_letters.broker(
        url,
        vec![taskgate_host::broker::amqp::QueueDecl {
            name: queue.clone(),
            arguments: Default::default(),
            delivery_limit: None,
        }],
    );
    let stop = CancellationToken::new();
    let task = {
        let broker = broker.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move { broker.run(|_| {}, stopped).await })
    };
    for _ in 0..100 {
        if broker.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(broker.is_connected(), "no TLS session within 5 s");
    broker.publish(request(&queue)).await.unwrap();

    let deleted = delete_queue(&queue).await;
    assert_eq!(deleted, 1, "the request went through TLS into its queue");
    stop_broker(stop, task).await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_a_clear_error() {
    let tls = terminator().await;
    let url = format!("amqps://guest:guest@localhost:{}/%2f", tls.port);
    let Err(err) = connect(&url).await else {
        panic!("connected to a server whose certificate nobody trusts");
    };
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test]
async fn a_missing_ca_file_is_a_bad_url() {
    let Err(err) =
        connect("amqps://guest:guest@localhost:5671/%2f?cacertfile=/nonexistent/ca.pem").await
    else {
        panic!("connected without its CA file");
    };
    assert!(matches!(err, ConnectError::BadUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

/// https:// to RabbitMQ's management API with the AMQP URL's `cacertfile` trusted: the counts
/// arrive; without it the certificate is refused, and the error says so.
#[tokio::test]
async fn the_management_api_is_read_over_https_and_an_untrusted_certificate_is_refused() {
    use axum::routing::get;
    use taskgate_host::console::management::Management;
    let app = axum::Router::new().route(
        "/api/queues/{vhost}",
        get(|| async {
            r#"[{"name":"q","messages_ready":2,"messages_unacknowledged":5,"consumers":1}]"#
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let tls = terminator_to(plain).await;
    let url = format!("https://localhost:{}", tls.port);
    let amqps = format!(
        "amqps://localhost?cacertfile={}",
        tls.ca_file.path().display()
    );
    let trusted = Management::from_urls(Some(&url), &amqps).unwrap();
    assert_eq!(trusted.queues().await.unwrap()["q"].unacked, 5);
    // Without the private CA only the system's are trusted (a machine without any is
    // told so at set-up instead).
    match Management::from_urls(Some(&url), "amqp://localhost") {
        Ok(untrusted) => {
            let refused = untrusted.queues().await.unwrap_err();
            assert!(refused.contains("certificate"), "says why: {refused}");
        }
        Err(no_roots) => assert!(no_roots.contains("CA certificate"), "{no_roots}"),
    }
    server.abort();
}
