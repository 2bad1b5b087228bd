//! `strata serve --unix-socket PATH`: HTTP, gRPC and the CLI on the socket, and the socket file's
//! life (a stale one is replaced, a live one or another file is refused, a clean stop removes it).
//! The batch door's descriptor transfer on it is tested with the other transfers in
//! `batch_stream.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::Server;
use strata_client::{Client, ProducerConfig, Record, Start, Transfer};

fn start(dir: &std::path::Path, socket: &std::path::Path) -> Server {
    Server::start_with_env(&dir.join("data"), &[("STRATA_UNIX_SOCKET", socket.to_str().unwrap())])
}

/// A plain HTTP/1.1 request on the socket; the whole response as text.
fn http(socket: &std::path::Path, request: &str) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_http_grpc_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("strata.sock");
    let s = start(dir.path(), &socket);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // HTTP/1.1 JSON.
    let health = http(&socket, "GET /healthz HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let missing = http(&socket, "GET /v1/topics/nope HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404") && missing.contains("topic_not_found"), "{missing}");

    // gRPC through the client: admin, a batching producer, a fetch and the batch door.
    let url = format!("unix:{}", socket.display());
    let client = Client::connect(&url).await.unwrap();
    client.admin().create_topic("local", 2, HashMap::new()).await.unwrap();
    let producer = client.producer(ProducerConfig::default());
    for i in 0..1000u32 {
        let value = format!("value-{i}").into_bytes();
        producer
            .send("local", Record { partition: Some(i % 2), value: Some(value), ..Default::default() })
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    let fetched = client.fetch("local", 1, Start::Earliest, 1000, Duration::ZERO).await.unwrap();
    assert_eq!(fetched.records.len(), 500);
    assert_eq!(fetched.records[0].value.as_deref(), Some(&b"value-1"[..]));
    let mut reader = client.read_batches("local", 0, Start::Earliest, 64 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(reader.transfer(), Transfer::Descriptors);
    let mut values = Vec::new();
    while let Some(batch) = reader.next_batch().await.unwrap() {
        values.extend(batch.records().unwrap().into_iter().map(|r| r.value.unwrap()));
    }
    assert_eq!(values.len(), 500);
    assert_eq!(values[499], Bytes::from("value-998"));

    // The CLI takes the same URL.
    let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(["topic", "list", "--server", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("local"));

    // A clean stop removes the socket file.
    assert_eq!(s.terminate().code(), Some(0));
    assert!(!socket.exists());
    let err = Client::connect(&url).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[test]
fn the_socket_file_is_replaced_only_when_stale() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("strata.sock");
    let serve = |data: &str| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join(data))
            .arg("--unix-socket")
            .arg(&socket)
            .env("STRATA_LOG", "error")
            .output()
            .unwrap()
    };

    // A live server's socket: a second server (another data directory) refuses to start.
    let first = start(dir.path(), &socket);
    let second = serve("other");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("Unix socket") && stderr.contains("another server is listening"), "{stderr}");

    // Killed, the first leaves its socket file behind: the next server replaces it.
    first.kill9();
    assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket());
    let again = start(dir.path(), &socket);
    let health = http(&socket, "GET /healthz HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    drop(again);

    // A file that is not a socket is never removed.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, b"precious").unwrap();
    let refused = serve("third");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_upgrade_the_unix_socket_streams_the_plain_response() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("strata.sock");
    let socket_env = socket.to_str().unwrap();
    let _s = Server::start_with_env(
        &dir.path().join("data"),
        &[("STRATA_UNIX_SOCKET", socket_env), ("STRATA_ZERO_COPY", "never")],
    );
    let client = Client::connect(&format!("unix:{}", socket.display())).await.unwrap();
    client.admin().create_topic("plain", 1, HashMap::new()).await.unwrap();
    let producer = client.producer(ProducerConfig::default());
    for i in 0..300u32 {
        producer
            .send("plain", Record { value: Some(format!("v{i}").into_bytes()), ..Default::default() })
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    let mut reader = client.read_batches("plain", 0, Start::Earliest, 64 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(reader.transfer(), Transfer::Response);
    let mut values = Vec::new();
    while let Some(batch) = reader.next_batch().await.unwrap() {
        values.extend(batch.records().unwrap().into_iter().map(|r| r.value.unwrap()));
    }
    assert_eq!(values, (0..300).map(|i| Bytes::from(format!("v{i}"))).collect::<Vec<_>>());
}
