//! The raw batch door (`GET /v1/topics/{topic}/partitions/{p}/batches`) against a real
//! `strata serve`: read through `strata-client`'s `BatchReader` and as plain HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::Server;
use strata_client::{Client, ClientError, Start, Transfer, proto};

/// The server sends batches with `sendfile` to every client that asks (over loopback too).
const ALWAYS: [(&str, &str); 1] = [("STRATA_ZERO_COPY", "always")];

/// Each way the door can send a stream to a client on this host, with the server settings that
/// choose it: the ordinary `200` (no upgrades), the default (upgraded, copied through a buffer
/// over loopback), `sendfile` for everyone, and descriptors to a client on the Unix socket
/// (the reader's client then connects there; `strata.sock` in the test's directory).
const TRANSFERS: [(Transfer, &[(&str, &str)]); 4] = [
    (Transfer::Response, &[("STRATA_ZERO_COPY", "never")]),
    (Transfer::Copy, &[]),
    (Transfer::Sendfile, &ALWAYS),
    (Transfer::Descriptors, &[]),
];

/// Starts a server (with `env`) with `topic` of `partitions` partitions in small segments
/// (64 KiB), so a response crosses many segment files. For `Transfer::Descriptors` the server
/// also listens on a Unix socket and the client returned connects through it.
async fn start_with_topic(
    dir: &std::path::Path,
    transfer: Transfer,
    env: &[(&str, &str)],
    topic: &str,
    partitions: u32,
) -> (Server, Client) {
    let socket = dir.join("strata.sock");
    let socket_env = [("STRATA_UNIX_SOCKET", socket.to_str().unwrap())];
    let env: Vec<_> =
        env.iter().chain(if transfer == Transfer::Descriptors { &socket_env[..] } else { &[] }).copied().collect();
    let s = Server::start_with_env(&dir.join("data"), &env);
    let url = if transfer == Transfer::Descriptors { format!("unix:{}", socket.display()) } else { s.url.clone() };
    let client = Client::connect(&url).await.unwrap();
    let config = HashMap::from([("segment_bytes".to_string(), "65536".to_string())]);
    client.admin().create_topic(topic, partitions, config).await.unwrap();
    (s, client)
}

/// Produces `batches` batches of `per_batch` records of ~1 KiB to partition 0 of `topic` over
/// gRPC, the value of offset `o` being `value(o)`.
async fn fill(url: &str, topic: &str, batches: u64, per_batch: u64) {
    let mut producer = proto::producer_client::ProducerClient::connect(url.to_string()).await.unwrap();
    for b in 0..batches {
        let records = (b * per_batch..(b + 1) * per_batch)
            .map(|o| proto::Record { value: Some(value(o)), partition: Some(0), ..Default::default() })
            .collect();
        let request = proto::ProduceRequest {
            batches: Vec::new(),
            topic: topic.into(),
            records,
            acks: proto::Acks::Leader as i32,
            request_id: b,
            producer: None,
            expected_offset: None,
        };
        producer.produce(request).await.unwrap();
    }
}

fn value(offset: u64) -> Bytes {
    Bytes::from(format!("{offset:08}-{}", "x".repeat(1000)))
}

/// Reads from `start` with responses of `max_bytes` until one comes back empty, checking that
/// every offset from `first` on arrives once, in order, with its value. Returns the offsets read
/// and how many responses it took.
async fn read_to_end(client: &Client, topic: &str, first: u64, max_bytes: u64) -> (u64, usize) {
    let (mut next, mut responses) = (first, 0);
    loop {
        let mut reader = client.read_batches(topic, 0, Start::Offset(next), max_bytes, Duration::ZERO).await.unwrap();
        assert_eq!(reader.offset(), next);
        responses += 1;
        let mut any = false;
        while let Some(batch) = reader.next_batch().await.unwrap() {
            any = true;
            assert!(batch.header().base_offset <= next, "a batch starts past offset {next}");
            let from = next;
            for r in batch.records().unwrap().into_iter().filter(|r| r.offset >= from) {
                assert_eq!(r.offset, next);
                assert_eq!(r.value.unwrap(), value(next));
                next += 1;
            }
            assert_eq!(reader.next_offset(), next);
        }
        if !any {
            return (next - first, responses);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_streams_as_its_stored_batches() {
    for (transfer, env) in TRANSFERS {
        streams_as_stored_batches(transfer, env).await;
    }
}

async fn streams_as_stored_batches(transfer: Transfer, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = start_with_topic(dir.path(), transfer, env, "history", 2).await;
    // 6,000 records of ~1 KiB in batches of 100: about 6 MB, so one response spans several of
    // the server's 2 MiB reads, and the read-ahead task runs.
    fill(&s.url, "history", 60, 100).await;

    // One response holds everything (the default max_bytes is 64 MiB).
    let mut reader = client.read_batches("history", 0, Start::Earliest, 64 << 20, Duration::ZERO).await.unwrap();
    assert_eq!((reader.offset(), reader.high_watermark(), reader.log_start_offset()), (0, 6000, 0));
    assert_eq!(reader.transfer(), transfer);
    assert_eq!(reader.is_zero_copy(), transfer == Transfer::Sendfile);
    let mut batches = 0;
    while reader.next_batch().await.unwrap().is_some() {
        batches += 1;
    }
    assert_eq!((batches, reader.next_offset()), (60, 6000));

    // Small responses, from the start and from inside a batch: every offset once and in order.
    let (read, responses) = read_to_end(&client, "history", 0, 200 << 10).await;
    assert_eq!(read, 6000);
    assert!(responses > 20, "{responses} responses of at most ~200 KiB carried 6 MB");
    assert_eq!(read_to_end(&client, "history", 4321, 1).await.0, 6000 - 4321);

    // `latest` and an empty partition: no batches, and the offset to continue from.
    let reader = client.read_batches("history", 0, Start::Latest, 1 << 20, Duration::ZERO).await.unwrap();
    assert_eq!((reader.offset(), reader.next_offset()), (6000, 6000));
    let mut empty = client.read_batches("history", 1, Start::Earliest, 1 << 20, Duration::ZERO).await.unwrap();
    assert!(empty.next_batch().await.unwrap().is_none());

    // A timestamp resolves to the first record at or after it.
    let mut reader = client.read_batches("history", 0, Start::Timestamp(0), 1, Duration::ZERO).await.unwrap();
    assert_eq!(reader.offset(), 0);
    assert_eq!(reader.next_batch().await.unwrap().unwrap().header().base_offset, 0);

    // Long-poll: a reader waiting at the end gets the next batch as soon as it is appended.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut reader =
                client.read_batches("history", 0, Start::Offset(6000), 1 << 20, Duration::from_secs(30)).await.unwrap();
            let batch = reader.next_batch().await.unwrap().unwrap();
            batch.records().unwrap().into_iter().map(|r| r.offset).collect::<Vec<_>>()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    fill(&s.url, "history", 1, 100).await; // offsets 0..100 again as values, appended at 6000
    let offsets = tokio::time::timeout(Duration::from_secs(20), waiting).await.unwrap().unwrap();
    assert_eq!(offsets, (6000..6100).collect::<Vec<_>>());

    // Records fetched count what the reader asked for: a read from offset 50 of a topic holding
    // 0..100 in one batch counts 50, though the whole batch goes out.
    client.admin().create_topic("counted", 1, HashMap::new()).await.unwrap();
    fill(&s.url, "counted", 1, 100).await;
    let mut reader = client.read_batches("counted", 0, Start::Offset(50), 1 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(reader.next_batch().await.unwrap().unwrap().header().record_count, 100);
    assert!(reader.next_batch().await.unwrap().is_none());
    let metrics = String::from_utf8(common::get(&format!("{}/metrics", s.url)).body).unwrap();
    assert!(
        metrics.lines().any(|l| l == "strata_records_fetched_total{topic=\"counted\"} 50"),
        "records fetched from `counted` should be 50:\n{}",
        metrics.lines().filter(|l| l.contains("records_fetched")).collect::<Vec<_>>().join("\n")
    );

    // One segment file of ~3 MB (the default segment size): each 2 MiB read of it is more than
    // one copy buffer (1 MiB) on the copying path.
    client.admin().create_topic("whole", 1, HashMap::new()).await.unwrap();
    fill(&s.url, "whole", 30, 100).await;
    assert_eq!(read_to_end(&client, "whole", 0, 64 << 20).await, (3000, 2));

    // The same bytes as plain HTTP: the body is whole stored batches, whose checksums hold.
    let r = common::get(&format!("{}/v1/topics/history/partitions/0/batches?offset=100&max_bytes=1", s.url));
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/vnd.strata.batches");
    let body = Bytes::from(r.body);
    let parsed: Vec<_> = strata_storage::batch::split_batches(&body).collect::<Result<_, _>>().unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!((parsed[0].header().base_offset, parsed[0].header().record_count), (100, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reads_get_problems_and_the_client_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("events", 1, HashMap::new()).await.unwrap();
    fill(&s.url, "events", 1, 10).await;

    let problem = |query: &str| {
        let r = common::get(&format!("{}/v1/topics/events/partitions/{query}", s.url));
        assert_eq!(r.content_type, "application/problem+json", "{query}");
        (r.status, r.json()["code"].as_str().unwrap().to_string())
    };
    assert_eq!(problem("0/batches?offset=11"), (416, "offset_out_of_range".into()));
    assert_eq!(problem("0/batches?offset=-1"), (400, "invalid_request".into()));
    assert_eq!(problem("0/batches?max_bytes=lots"), (400, "invalid_request".into()));
    assert_eq!(problem("0/batches?offset=1&timestamp=5"), (400, "invalid_request".into()));
    assert_eq!(problem("7/batches"), (404, "partition_not_found".into()));
    let r = common::get(&format!("{}/v1/topics/nope/partitions/0/batches", s.url));
    assert_eq!((r.status, r.json()["code"].as_str().unwrap()), (404, "topic_not_found"));

    let err = client.read_batches("events", 0, Start::Offset(11), 1, Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code: tonic::Code::OutOfRange, message } if message.starts_with("offset_out_of_range")),
        "{err}"
    );
    let err = client.read_batches("nope", 0, Start::Earliest, 1, Duration::ZERO).await.unwrap_err();
    assert!(matches!(&err, ClientError::Server { code: tonic::Code::NotFound, .. }), "{err}");
    let err = client.read_batches("no/such", 0, Start::Earliest, 1, Duration::ZERO).await.unwrap_err();
    assert!(matches!(&err, ClientError::Invalid(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_is_reported_by_the_client_on_either_path() {
    for (transfer, env) in TRANSFERS {
        damaged_batch_is_reported(transfer, env).await;
    }
}

/// The raw door does not check checksums on the server (Kafka's brokers do not either): the
/// client checks every batch.
async fn damaged_batch_is_reported(transfer: Transfer, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = start_with_topic(dir.path(), transfer, env, "damaged", 1).await;
    fill(&s.url, "damaged", 30, 10).await; // ~300 KB: several segments of 64 KiB

    // Flip a byte inside the records of the second segment's first batch (the server keeps
    // running: the change reaches its page cache).
    let mut logs: Vec<_> = std::fs::read_dir(s.data_dir.join("logs").join("damaged-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    assert!(logs.len() >= 3, "{logs:?}");
    let second_base: u64 = logs[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut bytes = std::fs::read(&logs[1]).unwrap();
    bytes[32 + 200] ^= 0x40;
    std::fs::write(&logs[1], &bytes).unwrap();

    // The stream hands out the batches before the damaged one, then the client's checksum
    // check stops it there; from the damaged batch on, it stops at once.
    for (start, first) in [(0, 0), (second_base, second_base)] {
        let mut reader =
            client.read_batches("damaged", 0, Start::Offset(start), 64 << 20, Duration::ZERO).await.unwrap();
        assert_eq!(reader.transfer(), transfer);
        let mut next = first;
        let error = loop {
            match reader.next_batch().await {
                Ok(Some(batch)) => next = batch.header().next_offset(),
                Ok(None) => panic!("the stream ended without reporting the damaged batch"),
                Err(e) => break e,
            }
        };
        assert!(matches!(&error, ClientError::Invalid(m) if m.contains("checksum mismatch")), "{error}");
        assert_eq!((next, reader.next_offset()), (second_base, second_base));
    }
    // Fetches that decode records on the server check it there: `data_corrupt`.
    let r = common::get(&format!("{}/v1/topics/damaged/partitions/0/records?offset={second_base}", s.url));
    assert_eq!((r.status, r.json()["code"].as_str().unwrap()), (500, "data_corrupt"));
    // The server is still up and serves the undamaged range.
    let mut reader = client.read_batches("damaged", 0, Start::Earliest, 1, Duration::ZERO).await.unwrap();
    assert_eq!(reader.next_batch().await.unwrap().unwrap().header().base_offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_zero_copy_stream_whose_client_stopped_reading() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &ALWAYS);
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("big", 1, HashMap::new()).await.unwrap();
    fill(&s.url, "big", 200, 100).await; // ~20 MB: more than the sockets' buffers hold

    // A client that asks for the stream, reads the 101 and then nothing: the server's writing
    // thread blocks on the full socket (for up to the 30 s write timeout).
    let mut socket = std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap();
    socket
        .write_all(
            b"GET /v1/topics/big/partitions/0/batches HTTP/1.1\r\nHost: strata\r\n\
              Connection: upgrade\r\nUpgrade: strata-batches\r\n\r\n",
        )
        .unwrap();
    let mut status = [0u8; 12];
    socket.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 101");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // SIGTERM: the stream is cut at once, not after the write timeout.
    let exit = tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(move || s.terminate()))
        .await
        .expect("shutdown waited for the stalled stream")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    drop(socket);
}
