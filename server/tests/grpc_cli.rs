//! gRPC (unary and pipelined stream, fetch, admin) through the Rust client, and the CLI through
//! stdin/stdout, against a real `strata serve` process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::Server;
use strata_client::{Client, ProducerConfig, Record, Start, partition_for_key, proto};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_stream_fetch_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    let admin = client.admin();
    let info =
        admin.create_topic("clicks", 3, HashMap::from([("flush".to_string(), "always".to_string())])).await.unwrap();
    assert_eq!(info.partitions.len(), 3);
    let dup = admin.create_topic("clicks", 3, HashMap::new()).await.unwrap_err();
    assert!(matches!(dup, strata_client::ClientError::Server { code: tonic::Code::AlreadyExists, .. }), "{dup}");

    // Unary produce: keys land where Kafka's partitioner puts them.
    let mut raw = proto::producer_client::ProducerClient::connect(s.url.clone()).await.unwrap();
    let record = |k: &str, v: &str| proto::Record {
        key: Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
        value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
        ..Default::default()
    };
    let reply = raw
        .produce(proto::ProduceRequest {
            batches: Vec::new(),
            topic: "clicks".into(),
            records: vec![record("u1", "a"), record("u2", "b")],
            acks: proto::Acks::Leader as i32,
            request_id: 9,
            producer: None,
            expected_offset: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.request_id, 9);
    assert_eq!(reply.offsets[0].partition, partition_for_key(b"u1", 3));
    assert_eq!(reply.offsets[1].partition, partition_for_key(b"u2", 3));

    // Pipelined stream: 200 requests in, acks out in request order.
    let requests: Vec<proto::ProduceRequest> = (0..200u64)
        .map(|i| proto::ProduceRequest {
            batches: Vec::new(),
            topic: "clicks".into(),
            records: vec![proto::Record {
                value: Some(format!("s{i}").into()),
                partition: Some(0),
                ..Default::default()
            }],
            acks: 0,
            request_id: i,
            producer: None,
            expected_offset: None,
        })
        .collect();
    let mut acks = raw.produce_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    let mut offsets = Vec::new();
    while let Some(ack) = acks.next().await {
        let ack = ack.unwrap();
        assert!(ack.error.is_none(), "{:?}", ack.error);
        ids.push(ack.request_id);
        offsets.push(ack.offsets[0].offset);
    }
    assert_eq!(ids, (0..200).collect::<Vec<_>>(), "acks in request order");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "one partition, dense offsets in stream order");
    // gRPC sends no Content-Length: request bytes are counted as the body streams in.
    let metrics = String::from_utf8(common::get(&format!("{}/metrics", s.url)).body).unwrap();
    let counted = |api: &str| -> u64 {
        let prefix = format!("strata_request_bytes_total{{api=\"{api}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0, |v| v.parse().unwrap())
    };
    assert!(counted("/strata.v1.Producer/Produce") > 0, "{metrics}");
    assert!(counted("/strata.v1.Producer/ProduceStream") >= 200 * 2, "{metrics}");

    // A bad request on the stream gets an error ack; the stream goes on.
    let bad = vec![
        proto::ProduceRequest {
            batches: Vec::new(),
            topic: "nope".into(),
            records: vec![record("k", "v")],
            acks: 0,
            request_id: 1,
            producer: None,
            expected_offset: None,
        },
        proto::ProduceRequest {
            batches: Vec::new(),
            topic: "clicks".into(),
            records: vec![record("k", "v")],
            acks: 0,
            request_id: 2,
            producer: None,
            expected_offset: None,
        },
    ];
    let acks: Vec<_> = raw.produce_stream(tokio_stream::iter(bad)).await.unwrap().into_inner().collect().await;
    assert_eq!(acks[0].as_ref().unwrap().error.as_ref().unwrap().code, "topic_not_found");
    assert!(acks[1].as_ref().unwrap().error.is_none());

    // Fetch.
    let page = client.fetch("clicks", 0, Start::Earliest, 1000, Duration::ZERO).await.unwrap();
    let values: Vec<String> =
        page.records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect();
    assert!(values.contains(&"s0".to_string()) && values.contains(&"s199".to_string()));
    // Raw-batch fetch: the same records from offset 5 on, decoded in the client.
    let raw = client.fetch_batches("clicks", 0, 5, 1 << 20, Duration::ZERO).await.unwrap();
    let decoded = client.fetch("clicks", 0, Start::Offset(5), 1000, Duration::ZERO).await.unwrap();
    assert_eq!(raw.records.len(), decoded.records.len());
    assert_eq!(raw.records[0].offset, 5);
    assert!(raw.records.iter().zip(&decoded.records).all(|(a, b)| a.offset == b.offset && a.value == b.value));
    let err = client.fetch("clicks", 0, Start::Offset(1_000_000), 10, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, strata_client::ClientError::Server { code: tonic::Code::OutOfRange, .. }), "{err}");
    let err = client.fetch("clicks", 7, Start::Earliest, 10, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, strata_client::ClientError::Server { code: tonic::Code::NotFound, .. }), "{err}");

    // The batching producer, keyed: same partition as the server's partitioner would pick.
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(2),
        compression: Some(strata_client::CompressionEncoding::Zstd),
        ..Default::default()
    });
    let mut deliveries = Vec::new();
    for i in 0..300 {
        deliveries.push(
            producer.send("clicks", Record::new(Some(format!("user-{}", i % 7)), format!("v{i}"))).await.unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for (i, d) in deliveries.into_iter().enumerate() {
        let (partition, _) = d.wait().await.unwrap();
        assert_eq!(partition, partition_for_key(format!("user-{}", i % 7).as_bytes(), 3));
    }
    let grown = admin.add_partitions("clicks", 4).await.unwrap();
    assert_eq!(grown.partitions.len(), 4);
    admin.delete_topic("clicks").await.unwrap();
    assert!(admin.list_topics().await.unwrap().is_empty());
}

/// Sends raw bytes as a gRPC message, to test what the server does with undecodable input.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_that_do_not_decode_get_a_status_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let channel = tonic::transport::Endpoint::from_shared(s.url.clone()).unwrap().connect().await.unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..200 {
        // Wire type 7 does not exist: certainly undecodable; then random bytes.
        let payload: Vec<u8> = if i == 0 {
            vec![0x0f, 0x01, 0x02]
        } else {
            (0..(i % 64))
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect()
        };
        for path in ["/strata.v1.Producer/Produce", "/strata.v1.Consumer/Fetch", "/strata.v1.Admin/CreateTopic"] {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let result = grpc.unary(tonic::Request::new(payload.clone()), path.parse().unwrap(), RawCodec).await;
            if let Err(status) = result {
                assert!(
                    matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound),
                    "{path}: {status}"
                );
                assert_ne!(status.code(), tonic::Code::Unavailable, "{path}: the server must survive: {status}");
            }
        }
    }
    let fine = Client::connect(&s.url).await.unwrap().admin().list_topics().await;
    assert!(fine.is_ok(), "still serving after garbage");
    let undecodable = {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(vec![0x0f, 0x01, 0x02]),
            "/strata.v1.Producer/Produce".parse().unwrap(),
            RawCodec,
        )
        .await
    };
    assert_eq!(undecodable.unwrap_err().code(), tonic::Code::InvalidArgument, "the caller's mistake, not the server's");
}

#[test]
fn cli_round_trip_through_stdin_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let strata = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env("STRATA_SERVER", &s.url).output().unwrap()
    };
    let created = strata(&["topic", "create", "lines", "--partitions", "1", "--config", "flush=always"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let mut produce = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["produce", "lines"])
        .env("STRATA_SERVER", &s.url)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    produce.stdin.take().unwrap().write_all(b"first line\nsecond line\n{\"json\": true}\n").unwrap();
    let out = produce.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("produced 3 records"));

    let consumed = strata(&["consume", "lines", "--from", "earliest", "--max", "3"]);
    assert!(consumed.status.success());
    assert_eq!(String::from_utf8(consumed.stdout).unwrap(), "first line\nsecond line\n{\"json\": true}\n");
    let json = strata(&["consume", "lines", "--from", "1", "--max", "1", "--format", "json"]);
    let line: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!((line["offset"].as_u64(), line["value"].as_str()), (Some(1), Some("second line")));

    let missing = strata(&["consume", "nope", "--max", "1"]);
    assert!(!missing.status.success());
    let err = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("topic_not_found"), "{err}");
    let bad_from = strata(&["consume", "lines", "--from", "yesterday"]);
    assert!(!bad_from.status.success());
}

/// `strata ARGS` against the server at `url`, stdin, stdout and stderr piped.
fn strata_cli(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.args(args).env("STRATA_SERVER", url).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs `strata ARGS` with `stdin`, and waits for it to exit within `limit`: a consume that
/// follows where it should stop would never exit, so it is killed and the test fails instead of
/// hanging.
fn strata_within(url: &str, args: &[&str], stdin: &[u8], limit: Duration) -> Output {
    let mut child = strata_cli(url, args).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    exit_within(child, limit, &format!("`strata {}`", args.join(" ")))
}

/// Waits for `child` to exit; kills it and fails, naming `what`, after `limit`.
fn exit_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Asserts `out` succeeded; its stdout's lines, sorted.
fn sorted_lines(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<String> = String::from_utf8(out.stdout.clone()).unwrap().lines().map(String::from).collect();
    lines.sort();
    lines
}

/// `strata consume --to-end` prints what each partition held when it started, including none
/// from an empty partition, and exits 0 instead of following.
#[test]
fn cli_consume_to_end_prints_what_the_topic_holds_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let strata = |args: &[&str], stdin: &[u8]| strata_within(&s.url, args, stdin, Duration::from_secs(60));
    let ok = sorted_lines;
    ok(&strata(&["topic", "create", "spread", "--partitions", "3"], b""));
    ok(&strata(&["produce", "spread", "--partition", "0"], b"a1\na2\na3\n"));
    ok(&strata(&["produce", "spread", "--partition", "2"], b"c1\nc2\n"));

    // Partition 1 is empty: nothing to wait for there.
    let dump = strata(&["consume", "spread", "--to-end"], b"");
    assert!(String::from_utf8_lossy(&dump.stderr).contains("consumed 5 records in"), "says what it read");
    let all = ok(&dump);
    assert_eq!(all, ["a1", "a2", "a3", "c1", "c2"]);
    let one = ok(&strata(&["consume", "spread", "--partition", "2", "--to-end", "--format", "json"], b""));
    assert_eq!(one.len(), 2);
    let from_one = ok(&strata(&["consume", "spread", "--partition", "0", "--from", "1", "--to-end"], b""));
    assert_eq!(from_one, ["a2", "a3"]);
    assert!(ok(&strata(&["consume", "spread", "--from", "latest", "--to-end"], b"")).is_empty());
    let capped = ok(&strata(&["consume", "spread", "--to-end", "--max", "2"], b""));
    assert_eq!(capped.len(), 2, "--max still stops first");
    // `--from N` over partitions that end before N: nothing from those, no error.
    assert_eq!(ok(&strata(&["consume", "spread", "--from", "2", "--to-end"], b"")), ["a3"]);
    assert!(ok(&strata(&["consume", "spread", "--from", "3", "--to-end"], b"")).is_empty());
    assert!(ok(&strata(&["consume", "spread", "--partition", "2", "--from", "9", "--to-end"], b"")).is_empty());
    // By how long ago: every record is from the last hour, none from after now.
    assert_eq!(ok(&strata(&["consume", "spread", "--from", "1h", "--to-end"], b"")).len(), 5);
    assert!(ok(&strata(&["consume", "spread", "--from", "0s", "--to-end"], b"")).is_empty());
    let vague = strata(&["consume", "spread", "--from", "yesterday", "--to-end"], b"");
    assert!(!vague.status.success());
    assert!(String::from_utf8_lossy(&vague.stderr).contains("how long ago (15m, 2h, 1d)"), "{vague:?}");

    // Following from an offset past a partition's end prints what arrives at or after it.
    let follower =
        strata_cli(&s.url, &["consume", "spread", "--partition", "2", "--from", "3", "--max", "1"]).spawn().unwrap();
    ok(&strata(&["produce", "spread", "--partition", "2"], b"c3\nc4\n"));
    let followed = exit_within(follower, Duration::from_secs(60), "the follower from offset 3");
    assert_eq!(ok(&followed), ["c4"], "offset 2 (c3) is below --from 3");

    let with_group = strata(&["consume", "spread", "--group", "g", "--to-end"], b"");
    assert!(!with_group.status.success());
    assert!(String::from_utf8_lossy(&with_group.stderr).contains("--to-end"));
}

/// A following `strata consume` waits on every partition at once: records produced to the last
/// partition while it is idle are printed at once, not when the first partition's long-poll ends;
/// also over more partitions than one HTTP/2 connection takes concurrent requests for (200: all
/// on one connection, the long-polls past it would queue in the client, and this test fails).
#[test]
fn cli_consume_follow_wakes_for_any_partition() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let strata = |args: &[&str], stdin: &[u8]| strata_within(&s.url, args, stdin, Duration::from_secs(60));
    for (topic, partitions) in [("quiet", 3), ("wide", 250)] {
        sorted_lines(&strata(&["topic", "create", topic, "--partitions", &partitions.to_string()], b""));
        let follower = strata_cli(&s.url, &["consume", topic, "--max", "2"]).spawn().unwrap();
        // Time to find every partition empty and start waiting; if it has not yet, the records
        // are simply found by its first round instead.
        std::thread::sleep(Duration::from_secs(1));
        let last = (partitions - 1).to_string();
        sorted_lines(&strata(&["produce", topic, "--partition", &last], b"late1\nlate2\n"));
        // Each idle long-poll lasts 30 s: a follower that waited on partition 0 alone would
        // still be waiting at this deadline.
        let out = exit_within(follower, Duration::from_secs(20), &format!("the follower of {topic}"));
        assert_eq!(sorted_lines(&out), ["late1", "late2"]);
    }
}

/// A following `strata consume` finds partitions added to the topic and reads them from their
/// start, as a Kafka consumer subscribed to the topic would.
#[test]
fn cli_consume_follow_reads_partitions_added_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let run = |args: &[&str], stdin: &[u8]| sorted_lines(&strata_within(&s.url, args, stdin, Duration::from_secs(60)));
    run(&["topic", "create", "growing", "--partitions", "1"], b"");
    let follower =
        strata_cli(&s.url, &["consume", "growing", "--max", "2", "--metadata-max-age", "1s"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    run(&["topic", "add-partitions", "growing", "--count", "3"], b"");
    run(&["produce", "growing", "--partition", "2"], b"new\n");
    run(&["produce", "growing", "--partition", "0"], b"old\n");

    // Without looking for new partitions nothing would read partition 2, and "new" would never
    // be printed.
    let out = exit_within(follower, Duration::from_secs(20), "the follower of a growing topic");
    assert_eq!(sorted_lines(&out), ["new", "old"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("partition 2"), "says which partitions it added");

    let clash =
        strata_cli(&s.url, &["consume", "growing", "--partition", "0", "--metadata-max-age", "1s"]).output().unwrap();
    assert!(!clash.status.success(), "--metadata-max-age only applies when following every partition");
}

/// `strata consume --from OFFSET` where retention has removed the records before OFFSET starts at
/// the partition's first record and says so, instead of failing.
#[test]
fn cli_consume_from_an_offset_retention_removed_starts_at_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &[("STRATA_CLEANUP_INTERVAL_MS", "100")]);
    let strata = |args: &[&str]| {
        let out = strata_within(&s.url, args, b"", Duration::from_secs(60));
        assert!(out.status.success(), "strata {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    // Every append after the first rolls a segment (segment_ms=1), and retention keeps no sealed one.
    strata(&["topic", "create", "short", "--config", "segment_ms=1", "--config", "retention_bytes=1"]);
    for value in ["r1", "r2", "r3"] {
        std::thread::sleep(Duration::from_millis(5));
        strata(&["produce", "short", "--value", value]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (out, err) = strata(&["consume", "short", "--from", "0", "--to-end"]);
        if err.contains("starts at offset") {
            // Retention may run between two of the consumer's reads, so what it printed before
            // the jump varies (nothing, or r1); after it, the first record left, to the end.
            let lines: Vec<&str> = out.lines().collect();
            assert!(lines.len() < 3 && lines.is_sorted(), "a gap where records were removed: {out:?}");
            assert!(out.ends_with("r3\n"), "read from the first record left to the end: {out:?}");
            break;
        }
        assert_eq!(out, "r1\nr2\nr3\n", "before retention ran, everything");
        assert!(std::time::Instant::now() < deadline, "retention never removed offset 0");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `Consumer.Subscribe` spoken directly: assignment, pushed records, commits, and the
/// cooperative hand-over acknowledged on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_stream_assigns_pushes_commits_and_hands_over_on_ack() {
    use proto::subscribe_request::Kind as Req;
    use proto::subscribe_response::Kind as Resp;

    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("jobs", 2, HashMap::new()).await.unwrap();
    let mut raw = proto::producer_client::ProducerClient::connect(s.url.clone()).await.unwrap();
    for p in 0..2 {
        let records = (0..5)
            .map(|i| proto::Record { value: Some(format!("{p}-{i}").into()), partition: Some(p), ..Default::default() })
            .collect();
        raw.produce(proto::ProduceRequest {
            batches: Vec::new(),
            topic: "jobs".into(),
            records,
            acks: 0,
            request_id: 0,
            producer: None,
            expected_offset: None,
        })
        .await
        .unwrap();
    }

    let join = |group: &str| proto::SubscribeRequest {
        kind: Some(Req::Join(proto::JoinGroup {
            group: group.into(),
            topics: vec!["jobs".into()],
            reset: proto::Position::Earliest as i32,
            ..Default::default()
        })),
    };
    let open = |first: proto::SubscribeRequest| {
        let url = s.url.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tx.send(first).await.unwrap();
            let mut consumer = proto::consumer_client::ConsumerClient::connect(url).await.unwrap();
            let inbound =
                consumer.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(|r| r.into_inner());
            (tx, inbound)
        }
    };
    async fn next(inbound: &mut tonic::Streaming<proto::SubscribeResponse>) -> Resp {
        tokio::time::timeout(Duration::from_secs(10), inbound.message()).await.unwrap().unwrap().unwrap().kind.unwrap()
    }

    // A bad first message ends the stream with INVALID_ARGUMENT.
    let bad = proto::SubscribeRequest { kind: Some(Req::Ack(proto::AssignmentAck { generation: 1 })) };
    let (_tx, refused) = open(bad).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    let (_tx, unknown) = open(proto::SubscribeRequest {
        kind: Some(Req::Join(proto::JoinGroup {
            group: "g".into(),
            topics: vec!["nope".into()],
            ..Default::default()
        })),
    })
    .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    let (a_tx, a) = open(join("workers")).await;
    let mut a = a.unwrap();
    let Resp::Assignment(first) = next(&mut a).await else { panic!("assignment first") };
    assert_eq!((first.partitions.len(), first.generation), (2, 1));
    let mut got = Vec::new();
    while got.len() < 10 {
        match next(&mut a).await {
            Resp::Records(batch) => got.extend(batch.records.into_iter().map(|r| {
                let rec = r.record.unwrap();
                (rec.partition, rec.offset)
            })),
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, (0..2).flat_map(|p| (0..5).map(move |o| (p, o))).collect::<Vec<_>>());

    // B joins: A is told it loses one partition, commits everything, then acks.
    let (_b_tx, b) = open(join("workers")).await;
    let mut b = b.unwrap();
    let Resp::Assignment(b_first) = next(&mut b).await else { panic!("assignment first") };
    assert!(b_first.partitions.is_empty(), "nothing moves before A acks: {b_first:?}");
    let Resp::Assignment(told) = next(&mut a).await else { panic!("a new assignment") };
    assert_eq!((told.partitions.len(), told.revoking.len()), (1, 1), "{told:?}");
    let offsets = (0..2).map(|p| proto::PartitionOffset { topic: "jobs".into(), partition: p, offset: 5 }).collect();
    let commit = proto::CommitOffsets { id: 7, generation: told.generation, offsets };
    a_tx.send(proto::SubscribeRequest { kind: Some(Req::Commit(commit)) }).await.unwrap();
    let Resp::CommitResult(result) = next(&mut a).await else { panic!("commit result") };
    assert_eq!((result.id, result.error), (7, None));
    a_tx.send(proto::SubscribeRequest { kind: Some(Req::Ack(proto::AssignmentAck { generation: told.generation })) })
        .await
        .unwrap();
    let Resp::Assignment(settled) = next(&mut a).await else { panic!("settled assignment") };
    assert_eq!((settled.partitions, settled.revoking.len()), (told.partitions, 0));
    let Resp::Assignment(b_now) = next(&mut b).await else { panic!("B's partitions") };
    assert_eq!(b_now.partitions, told.revoking);

    // A's commit for the partition it gave away is refused, and the stream stays open.
    let moved = told.revoking[0].partition;
    let offsets = vec![proto::PartitionOffset { topic: "jobs".into(), partition: moved, offset: 5 }];
    let commit = proto::CommitOffsets { id: 8, generation: settled.generation, offsets };
    a_tx.send(proto::SubscribeRequest { kind: Some(Req::Commit(commit)) }).await.unwrap();
    let Resp::CommitResult(refused) = next(&mut a).await else { panic!("commit result") };
    assert_eq!(refused.error.unwrap().code, "stale_generation");

    // Closing A's stream leaves the group at once: B gets both partitions and reads from the
    // committed offsets, so nothing is delivered twice.
    drop(a_tx);
    drop(a);
    let Resp::Assignment(b_all) = next(&mut b).await else { panic!("B takes over") };
    assert_eq!(b_all.partitions.len(), 2);
    raw.produce(proto::ProduceRequest {
        batches: Vec::new(),
        topic: "jobs".into(),
        records: vec![proto::Record { value: Some("late".into()), partition: Some(moved), ..Default::default() }],
        acks: 0,
        request_id: 0,
        producer: None,
        expected_offset: None,
    })
    .await
    .unwrap();
    let Resp::Records(late) = next(&mut b).await else { panic!("records") };
    let rec = late.records[0].record.clone().unwrap();
    assert_eq!((rec.partition, rec.offset, late.records.len()), (moved, 5, 1));
}

/// SIGTERM with a Subscribe stream and an SSE stream open: both end, the stream member leaves
/// the group, and the server exits 0 instead of waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    use proto::subscribe_request::Kind as Req;

    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("t", 1, HashMap::new()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let join = proto::JoinGroup { group: "streamers".into(), topics: vec!["t".into()], ..Default::default() };
    tx.send(proto::SubscribeRequest { kind: Some(Req::Join(join)) }).await.unwrap();
    let mut consumer = proto::consumer_client::ConsumerClient::connect(s.url.clone()).await.unwrap();
    let mut inbound = consumer.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    inbound.message().await.unwrap().unwrap();
    let url = s.url.clone();
    let sse = std::thread::spawn(move || {
        let member =
            common::post_json(&format!("{url}/v1/groups/pushed/members"), &serde_json::json!({"topics": ["t"]}));
        let id = member.json()["member_id"].as_str().unwrap().to_string();
        let mut body = ureq::get(&format!("{url}/v1/groups/pushed/members/{id}/stream")).call().unwrap().into_body();
        // Reads until the server ends the stream.
        body.read_to_vec().map(|b| b.len())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let exit = tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || s.terminate()))
        .await
        .expect("shutdown waited for the open streams")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(sse.join().unwrap().is_ok(), "the SSE stream ended cleanly");
    drop(tx);

    // The stream member left before the server stopped; the HTTP member is still there.
    let s = Server::start(dir.path());
    let streamers = common::get(&format!("{}/v1/groups/streamers", s.url));
    assert!(streamers.status == 404 || streamers.json()["members"].as_array().unwrap().is_empty());
    let pushed = common::get(&format!("{}/v1/groups/pushed", s.url)).json();
    assert_eq!(pushed["members"].as_array().unwrap().len(), 1, "{pushed}");
}

/// A batch as `strata-client`'s producer builds it: `values` in one partition's batch.
fn client_batch(values: &[&str], codec: strata_storage::Compression) -> bytes::Bytes {
    let mut builder = strata_storage::BatchBuilder::new(codec);
    for (i, v) in values.iter().enumerate() {
        builder.push(1_700_000_000_000 + i as i64, Some(b"k"), Some(v.as_bytes()), &[]);
    }
    builder.build().unwrap().into()
}

fn batches_request(topic: &str, batches: Vec<(u32, bytes::Bytes)>, request_id: u64) -> proto::ProduceRequest {
    proto::ProduceRequest {
        topic: topic.into(),
        records: Vec::new(),
        acks: proto::Acks::Leader as i32,
        request_id,
        producer: None,
        expected_offset: None,
        batches: batches.into_iter().map(|(partition, data)| proto::RecordBatch { partition, data }).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_built_batches_are_appended_as_they_are_and_bad_ones_refused() {
    use strata_storage::Compression;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    let admin = client.admin();
    let config = HashMap::from([("max_record_bytes".to_string(), "1024".to_string())]);
    admin.create_topic("events", 2, config).await.unwrap();
    let mut raw = proto::producer_client::ProducerClient::connect(s.url.clone()).await.unwrap();

    // Unary: one batch per partition, placed as a whole; a compressed batch stays compressed.
    let reply = raw
        .produce(batches_request(
            "events",
            vec![
                (1, client_batch(&["a", "b", "c"], Compression::None)),
                (0, client_batch(&["x", "y"], Compression::Zstd)),
            ],
            5,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.request_id, 5);
    assert!(reply.offsets.is_empty());
    let placed: Vec<_> = reply.batches.iter().map(|b| (b.partition, b.base_offset, b.count)).collect();
    assert_eq!(placed, [(1, 0, 3), (0, 0, 2)]);

    // Pipelined stream: acks in request order, offsets dense across batches.
    let requests: Vec<_> = (0..50u64)
        .map(|i| batches_request("events", vec![(1, client_batch(&[&format!("s{i}"), "t"], Compression::Lz4))], i))
        .collect();
    let mut acks = raw.produce_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut next = 3;
    for i in 0..50u64 {
        let ack = acks.next().await.unwrap().unwrap();
        assert_eq!((ack.request_id, ack.error), (i, None));
        assert_eq!((ack.batches[0].base_offset, ack.batches[0].count), (next, 2));
        next += 2;
    }
    let page = client.fetch("events", 1, Start::Earliest, 1000, Duration::ZERO).await.unwrap();
    let values: Vec<String> =
        page.records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect();
    assert_eq!(values.len(), 103);
    assert_eq!(values[..4], ["a", "b", "c", "s0"]);
    assert_eq!(values[101..], ["s49", "t"]);
    assert_eq!(page.records[0].timestamp_ms, 1_700_000_000_000, "the producer's timestamps are kept");
    let zstd = client.fetch("events", 0, Start::Earliest, 10, Duration::ZERO).await.unwrap();
    assert_eq!(zstd.records.iter().map(|r| r.value.clone().unwrap()).collect::<Vec<_>>(), [&b"x"[..], b"y"]);

    // Bad batches: refused with a stable code, nothing appended.
    let refused = |request: proto::ProduceRequest| {
        let mut raw = raw.clone();
        async move { raw.produce(request).await.unwrap_err() }
    };
    let mut corrupt = client_batch(&["a"], Compression::None).to_vec();
    *corrupt.last_mut().unwrap() ^= 1;
    let mut pid = strata_storage::BatchBuilder::new(Compression::None).producer(strata_storage::ProducerInfo {
        id: 1,
        epoch: 0,
        base_sequence: 0,
    });
    pid.push(1, None, Some(b"v"), &[]);
    let big = "v".repeat(2000);
    let one = || client_batch(&["a"], Compression::None);
    for (request, code, what) in [
        (batches_request("events", vec![(0, corrupt.into())], 0), tonic::Code::InvalidArgument, "checksum mismatch"),
        (
            batches_request("events", vec![(0, bytes::Bytes::from_static(b"junk"))], 0),
            tonic::Code::InvalidArgument,
            "truncated",
        ),
        (
            batches_request("events", vec![(0, pid.build().unwrap().into())], 0),
            tonic::Code::InvalidArgument,
            "producer fields",
        ),
        (batches_request("events", vec![(0, one()), (0, one())], 0), tonic::Code::InvalidArgument, "one per partition"),
        (batches_request("events", vec![(7, one())], 0), tonic::Code::NotFound, "partition_not_found"),
        (
            batches_request("events", vec![(0, client_batch(&[&big], Compression::Lz4))], 0),
            tonic::Code::ResourceExhausted,
            "record_too_large",
        ),
        (batches_request("nope", vec![(0, one())], 0), tonic::Code::NotFound, "topic_not_found"),
        (
            proto::ProduceRequest {
                records: vec![proto::Record::default()],
                ..batches_request("events", vec![(0, one())], 0)
            },
            tonic::Code::InvalidArgument,
            "not both",
        ),
    ] {
        let status = refused(request).await;
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(what), "{what}: {}", status.message());
    }
    let described = admin.describe_topic("events").await.unwrap();
    let hw: Vec<u64> = described.partitions.iter().map(|p| p.high_watermark).collect();
    assert_eq!(hw, [2, 103], "a refused request appends nothing");

    // A producer session: the server writes the session into the batch; a retry is stored once.
    let session = raw.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner();
    let with_session = |sequence| proto::ProduceRequest {
        producer: Some(proto::ProducerSession { id: session.id, epoch: 0, sequence }),
        ..batches_request("events", vec![(0, client_batch(&["p", "q"], Compression::None))], 0)
    };
    let first = raw.produce(with_session(0)).await.unwrap().into_inner();
    let retry = raw.produce(with_session(0)).await.unwrap().into_inner();
    assert_eq!(first.batches, retry.batches);
    assert_eq!((first.batches[0].base_offset, first.batches[0].count), (2, 2));
    let described = admin.describe_topic("events").await.unwrap();
    assert_eq!(described.partitions[0].high_watermark, 4);

    // The client's producer sends batches it built; its deliveries name each record's offset.
    let producer = client.producer(ProducerConfig {
        batch_compression: Compression::Lz4,
        linger: Duration::from_millis(2),
        ..Default::default()
    });
    let mut deliveries = Vec::new();
    for i in 0..100 {
        deliveries
            .push(producer.send("events", Record::new(Some(format!("key-{}", i % 5)), format!("w{i}"))).await.unwrap());
    }
    producer.flush().await.unwrap();
    for (i, d) in deliveries.into_iter().enumerate() {
        let (partition, offset) = d.wait().await.unwrap();
        assert_eq!(partition, partition_for_key(format!("key-{}", i % 5).as_bytes(), 2));
        let page = client.fetch("events", partition, Start::Offset(offset), 1, Duration::ZERO).await.unwrap();
        assert_eq!(page.records[0].value.as_deref(), Some(format!("w{i}").as_bytes()), "record {i}");
    }
}

/// The client's producer, keyed over many partitions: one request carries every partition's
/// batch (as Kafka's producer sends a broker all its ready batches), a partition's batches stay in
/// order when several wait behind its request in flight, and requests split at
/// `max_request_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_sends_many_partitions_in_one_request_and_keeps_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("wide", 100, HashMap::new()).await.unwrap();
    let produce_requests = || -> u64 {
        let metrics = String::from_utf8(common::get(&format!("{}/metrics", s.url)).body).unwrap();
        let prefix = "strata_requests_total{api=\"/strata.v1.Producer/Produce\"";
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let key = |i: usize| format!("user-{i}");

    // 1,000 keyed records over 100 partitions, one flush: a request or two, not a hundred.
    let producer = client.producer(ProducerConfig { linger: Duration::from_secs(5), ..Default::default() });
    let mut deliveries = Vec::new();
    for i in 0..1000 {
        deliveries.push(producer.send("wide", Record::new(Some(key(i)), format!("a{i}"))).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut partitions = std::collections::HashSet::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let (partition, _) = d.wait().await.unwrap();
        assert_eq!(partition, partition_for_key(key(i).as_bytes(), 100));
        partitions.insert(partition);
    }
    assert!(partitions.len() > 90, "keys spread over {} partitions", partitions.len());
    let requests = produce_requests();
    assert!(requests <= 2, "{requests} produce requests for one flush over 100 partitions");
    // Each request's stages are timed once each.
    let metrics = String::from_utf8(common::get(&format!("{}/metrics", s.url)).body).unwrap();
    for stage in ["append", "acknowledge"] {
        let prefix = format!("strata_produce_stage_seconds_count{{stage=\"{stage}\"}} ");
        let count = metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok());
        assert_eq!(count, Some(requests), "stage {stage}");
    }

    // Tiny batches (a few records each), one request a batch: many batches queue behind each
    // partition's request in flight, and still land in the order they were sent.
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(1),
        batch_bytes: 100,
        max_request_bytes: 1,
        ..Default::default()
    });
    let mut deliveries = Vec::new();
    for i in 0..600 {
        deliveries.push((i, producer.send("wide", Record::new(Some(key(i % 6)), format!("b{i}"))).await.unwrap()));
    }
    producer.flush().await.unwrap();
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (i, d) in deliveries {
        let (partition, offset) = d.wait().await.unwrap();
        if let Some(previous) = last.insert(partition, offset) {
            assert!(offset > previous, "record {i}: offset {offset} after {previous} in partition {partition}");
        }
        let page = client.fetch("wide", partition, Start::Offset(offset), 1, Duration::ZERO).await.unwrap();
        assert_eq!(page.records[0].value.as_deref(), Some(format!("b{i}").as_bytes()), "record {i}");
    }
    assert!(produce_requests() > requests + 50, "one batch a request");
}

/// The producer fails only the records the server would refuse: a record over the topic's
/// `max_record_bytes` fails in the client, and one under the limit the producer knows but over the
/// server's (the topic was altered since) fails alone although its request carried other
/// partitions' batches; a partition beyond the topic fails alone and is looked up again
/// (partitions may have been added), as is a record over the limit once it is raised; an
/// unknown topic fails its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_fails_only_the_records_the_server_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    let limit = |bytes: u32| HashMap::from([("max_record_bytes".to_string(), bytes.to_string())]);
    client.admin().create_topic("small", 4, limit(1000)).await.unwrap();
    let producer = client.producer(ProducerConfig { linger: Duration::from_secs(5), ..Default::default() });
    let at = |p: u32, value: &str| Record { partition: Some(p), ..Record::new(None::<Vec<u8>>, value) };

    // The producer looks the topic up (max_record_bytes 1000); then the limit falls to 500.
    producer.send("small", at(0, "first")).await.unwrap();
    producer.flush().await.unwrap();
    client.admin().alter_topic_config("small", limit(500)).await.unwrap();

    let mut good = Vec::new();
    for p in 0..3 {
        good.push(producer.send("small", at(p, &format!("fine {p}"))).await.unwrap());
    }
    // Alone in its partition: the server refuses a batch whole.
    let over_the_servers = producer.send("small", at(3, &"x".repeat(700))).await.unwrap();
    let over_the_producers = producer.send("small", at(3, &"x".repeat(2000))).await.unwrap();
    let beyond = producer.send("small", at(9, "nowhere")).await.unwrap();
    let unknown = producer.send("missing", at(0, "lost")).await.unwrap();
    let after = producer.send("small", at(1, "after the unknown topic")).await.unwrap();
    producer.flush().await.unwrap();

    for (p, d) in good.into_iter().enumerate() {
        let (partition, offset) = d.wait().await.unwrap();
        assert_eq!(partition, p as u32);
        let page = client.fetch("small", partition, Start::Offset(offset), 1, Duration::ZERO).await.unwrap();
        assert_eq!(page.records[0].value.as_deref(), Some(format!("fine {p}").as_bytes()));
    }
    match over_the_servers.wait().await {
        Err(strata_client::ClientError::Server { code: tonic::Code::ResourceExhausted, message }) => {
            assert!(message.starts_with("record_too_large"), "{message}");
        }
        other => panic!("a record over the server's max_record_bytes: {other:?}"),
    }
    match over_the_producers.wait().await {
        Err(strata_client::ClientError::Invalid(message)) => assert!(message.contains("max_record_bytes"), "{message}"),
        other => panic!("a record over the producer's max_record_bytes: {other:?}"),
    }
    match beyond.wait().await {
        Err(strata_client::ClientError::Invalid(message)) => assert!(message.contains("0..4"), "{message}"),
        other => panic!("partition 9 of 4: {other:?}"),
    }
    match unknown.wait().await {
        Err(strata_client::ClientError::Server { code: tonic::Code::NotFound, .. }) => {}
        other => panic!("an unknown topic: {other:?}"),
    }
    assert_eq!(after.wait().await.unwrap().0, 1);
    // Nothing else was stored.
    let topic = client.admin().describe_topic("small").await.unwrap();
    let stored: Vec<u64> = topic.partitions.iter().map(|p| p.high_watermark).collect();
    assert_eq!(stored, [2, 2, 1, 0]);

    // The topic grows and takes larger records; the same producer finds both on looking again.
    client.admin().add_partitions("small", 12).await.unwrap();
    client.admin().alter_topic_config("small", limit(5000)).await.unwrap();
    let found = producer.send("small", at(9, "found")).await.unwrap();
    let larger = producer.send("small", at(3, &"x".repeat(2000))).await.unwrap();
    producer.flush().await.unwrap();
    assert_eq!(found.wait().await.unwrap(), (9, 0));
    assert_eq!(larger.wait().await.unwrap(), (3, 0));
}

/// Keyless records move to another partition after `batch_bytes`, also when light load sends
/// every batch by `linger` before it fills (as Kafka's producer does since KIP-794).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_spread_over_partitions_under_light_load() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("light", 4, HashMap::new()).await.unwrap();
    let producer =
        client.producer(ProducerConfig { linger: Duration::from_millis(1), batch_bytes: 1000, ..Default::default() });
    let mut partitions = std::collections::HashSet::new();
    for i in 0..40 {
        // One record at a time, each batch sent by linger with a single record in it.
        let d = producer.send("light", Record::new(None::<Vec<u8>>, format!("{i:0>100}"))).await.unwrap();
        partitions.insert(d.wait().await.unwrap().0);
    }
    assert!(partitions.len() > 1, "40 keyless records of ~110 bytes all went to {partitions:?}");
}

/// What the producer knows of a topic is looked up again after `metadata_max_age`: keyed records
/// then hash over the partitions added meanwhile, as the server's partitioner would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_finds_partitions_added_after_metadata_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("growing", 1, HashMap::new()).await.unwrap();
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(1),
        metadata_max_age: Duration::from_millis(100),
        ..Default::default()
    });
    let key = |i: usize| format!("user-{i}");
    let d = producer.send("growing", Record::new(Some(key(0)), "before")).await.unwrap();
    assert_eq!(d.wait().await.unwrap(), (0, 0));

    client.admin().add_partitions("growing", 8).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Sent with what was known (one partition); it starts the lookup, which `flush` waits for.
    let d = producer.send("growing", Record::new(Some(key(1)), "while looking")).await.unwrap();
    producer.flush().await.unwrap();
    assert_eq!(d.wait().await.unwrap().0, 0);

    let mut deliveries = Vec::new();
    for i in 0..50 {
        deliveries.push((i, producer.send("growing", Record::new(Some(key(i)), "after")).await.unwrap()));
    }
    producer.flush().await.unwrap();
    let mut partitions = std::collections::HashSet::new();
    for (i, d) in deliveries {
        let (partition, _) = d.wait().await.unwrap();
        assert_eq!(partition, partition_for_key(key(i).as_bytes(), 8), "record {i}");
        partitions.insert(partition);
    }
    assert!(partitions.len() > 1, "50 keys over 8 partitions went to {partitions:?}");
}

/// `expected_offset` over gRPC, as over HTTP: a request to one explicit partition is appended
/// only at that partition's next offset; otherwise `FAILED_PRECONDITION` and nothing is
/// appended. Records and client-built batches alike; a request that spans partitions, or whose
/// records leave the partition to the key, is refused as invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_offset_appends_only_at_the_partitions_next_offset() {
    use strata_storage::Compression;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("ledger", 2, HashMap::new()).await.unwrap();
    let mut raw = proto::producer_client::ProducerClient::connect(s.url.clone()).await.unwrap();
    let records = |partition: Option<u32>, values: &[&str], expected_offset: Option<u64>| proto::ProduceRequest {
        topic: "ledger".into(),
        records: values
            .iter()
            .map(|v| proto::Record {
                key: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
                value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
                partition,
                ..Default::default()
            })
            .collect(),
        acks: proto::Acks::Leader as i32,
        expected_offset,
        ..Default::default()
    };
    let high_watermark = || {
        let topic = common::get(&format!("{}/v1/topics/ledger", s.url)).json();
        topic["partitions"][1]["high_watermark"].as_u64().unwrap()
    };

    let reply = raw.produce(records(Some(1), &["a", "b"], Some(0))).await.unwrap().into_inner();
    assert_eq!(reply.offsets.iter().map(|o| (o.partition, o.offset)).collect::<Vec<_>>(), [(1, 0), (1, 1)]);
    // A second writer that read the partition at offset 0 loses the race.
    let stale = raw.produce(records(Some(1), &["c"], Some(0))).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
    assert!(stale.message().contains("it is 2"), "names the next offset: {}", stale.message());
    assert_eq!(high_watermark(), 2, "nothing appended");
    let reply = raw.produce(records(Some(1), &["c"], Some(2))).await.unwrap().into_inner();
    assert_eq!(reply.offsets[0].offset, 2);

    // Records the key places, or two partitions in one request: not one explicit partition.
    let keyed = raw.produce(records(None, &["d"], Some(3))).await.unwrap_err();
    assert_eq!(keyed.code(), tonic::Code::InvalidArgument, "{keyed:?}");

    // Client-built batches: one batch, one partition.
    let mut request = batches_request("ledger", vec![(1, client_batch(&["e", "f"], Compression::None))], 7);
    request.expected_offset = Some(3);
    let reply = raw.produce(request.clone()).await.unwrap().into_inner();
    assert_eq!((reply.batches[0].partition, reply.batches[0].base_offset), (1, 3));
    let stale = raw.produce(request).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
    let mut two = batches_request(
        "ledger",
        vec![(0, client_batch(&["g"], Compression::None)), (1, client_batch(&["h"], Compression::None))],
        8,
    );
    two.expected_offset = Some(5);
    let spans = raw.produce(two).await.unwrap_err();
    assert_eq!(spans.code(), tonic::Code::InvalidArgument, "{spans:?}");
    assert_eq!(high_watermark(), 5, "refused requests appended nothing");
}
