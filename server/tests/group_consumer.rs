//! The Rust group consumer over gRPC `Consumer.Subscribe`, and `strata consume --group`, against a
//! real `strata serve` process: partitions split and move, commit on revoke, fencing of stale
//! commits, and the CLI continuing after a group's committed offsets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use strata_client::{
    Client, GroupConfig, GroupConsumer, GroupRecord, ProducerConfig, RebalanceListener, Record, TopicPartition, proto,
};
use tokio::time::Instant;

/// Bounds every wait for the server to move partitions.
const PATIENCE: Duration = Duration::from_secs(20);

async fn produce(client: &Client, topic: &str, per_partition: &[(u32, usize)]) {
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for &(partition, n) in per_partition {
        for i in 0..n {
            let record =
                Record { partition: Some(partition), ..Record::new(None::<Vec<u8>>, format!("p{partition}-{i}")) };
            deliveries.push(producer.send(topic, record).await.unwrap());
        }
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.wait().await.unwrap();
    }
}

fn manual(group: &str, topic: &str) -> GroupConfig {
    GroupConfig { auto_commit: None, ..GroupConfig::new(group, [topic]) }
}

fn key(r: &GroupRecord) -> (u32, u64) {
    (r.partition(), r.offset())
}

fn partitions(c: &GroupConsumer) -> BTreeSet<u32> {
    c.assignment().iter().map(|tp| tp.partition).collect()
}

async fn committed(client: &Client, group: &str) -> BTreeMap<u32, Option<u64>> {
    let info = client.admin().describe_group(group).await.unwrap();
    info.offsets.iter().map(|o| (o.partition, o.committed)).collect()
}

/// Polls `c` once (short), commits what it returned, and adds it to `seen`.
async fn poll_commit(c: &mut GroupConsumer, seen: &mut Vec<(u32, u64)>) {
    let records = c.poll(Duration::from_millis(100)).await.unwrap();
    if !records.is_empty() {
        seen.extend(records.iter().map(key));
        c.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_partitions_and_the_survivor_takes_all() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("orders", 4, HashMap::new()).await.unwrap();
    produce(&client, "orders", &[(0, 10), (1, 10), (2, 10), (3, 10)]).await;

    let mut a = client.group_consumer(manual("billing", "orders")).await.unwrap();
    assert_eq!(partitions(&a), BTreeSet::from([0, 1, 2, 3]), "alone, A owns every partition");
    let mut b = client.group_consumer(manual("billing", "orders")).await.unwrap();
    assert_ne!(a.member_id(), b.member_id());

    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + PATIENCE;
    while !(partitions(&a).len() == 2 && partitions(&b).len() == 2) {
        assert!(Instant::now() < deadline, "no split: A {:?}, B {:?}", partitions(&a), partitions(&b));
        poll_commit(&mut a, &mut seen_a).await;
        poll_commit(&mut b, &mut seen_b).await;
    }
    assert!(partitions(&a).is_disjoint(&partitions(&b)), "A {:?}, B {:?}", partitions(&a), partitions(&b));

    // More records while split, then A leaves: B takes over everything.
    produce(&client, "orders", &[(0, 5), (1, 5), (2, 5), (3, 5)]).await;
    for _ in 0..5 {
        poll_commit(&mut a, &mut seen_a).await;
        poll_commit(&mut b, &mut seen_b).await;
    }
    a.close().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while partitions(&b).len() < 4 || seen_a.len() + seen_b.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "B owns {:?}, {} records seen of 60",
            partitions(&b),
            seen_a.len() + seen_b.len()
        );
        poll_commit(&mut b, &mut seen_b).await;
    }
    let mut all: Vec<(u32, u64)> = seen_a.iter().chain(&seen_b).copied().collect();
    all.sort_unstable();
    let expected: Vec<(u32, u64)> = (0..4).flat_map(|p| (0..15).map(move |o| (p, o))).collect();
    assert_eq!(all, expected, "every record exactly once (each batch was committed before the next poll)");
    for p in 0..4 {
        // A position is the offset after the last record B returned from the partition, if any.
        let last = seen_b.iter().filter(|(q, _)| *q == p).map(|(_, o)| o + 1).max();
        assert_eq!(b.position("orders", p), last, "partition {p}");
    }
    assert!(seen_b.iter().any(|&(_, o)| o >= 10), "B read records produced after the split");
    assert_eq!(committed(&client, "billing").await, (0..4).map(|p| (p, Some(15))).collect());
    let info = client.admin().describe_group("billing").await.unwrap();
    assert_eq!(info.members.len(), 1, "A left when it closed");
    b.close().await.unwrap();
}

/// Commits what was processed of each revoked partition, and remembers what it was told.
#[derive(Clone, Default)]
struct CommitOnRevoke {
    revoked: Arc<Mutex<Vec<TopicPartition>>>,
    assigned: Arc<Mutex<Vec<TopicPartition>>>,
}

impl RebalanceListener for CommitOnRevoke {
    fn on_revoked(
        &mut self,
        revoked: &[TopicPartition],
        positions: &BTreeMap<TopicPartition, u64>,
    ) -> Vec<(TopicPartition, u64)> {
        self.revoked.lock().unwrap().extend(revoked.iter().cloned());
        revoked.iter().filter_map(|tp| positions.get(tp).map(|&o| (tp.clone(), o))).collect()
    }

    fn on_assigned(&mut self, assigned: &[TopicPartition]) {
        self.assigned.lock().unwrap().extend(assigned.iter().cloned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_on_revoke_hands_partitions_over_without_duplicates_and_stale_commits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("events", 4, HashMap::new()).await.unwrap();
    produce(&client, "events", &[(0, 20), (1, 20), (2, 20), (3, 20)]).await;

    // A reads everything and commits nothing itself.
    let listener = CommitOnRevoke::default();
    let mut a = client.group_consumer_with_listener(manual("audit", "events"), listener.clone()).await.unwrap();
    assert_eq!(listener.assigned.lock().unwrap().len(), 4, "the first assignment reaches the listener");
    let mut seen_a = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while seen_a.len() < 80 {
        assert!(Instant::now() < deadline, "A read {} of 80", seen_a.len());
        seen_a.extend(a.poll(Duration::from_millis(200)).await.unwrap().iter().map(key));
    }
    assert!(committed(&client, "audit").await.values().all(Option::is_none), "nothing committed yet");
    let generation_before = a.generation();

    // B joins; A's next polls revoke two partitions, commit them, and hand them over.
    let mut b = client.group_consumer(manual("audit", "events")).await.unwrap();
    let mut seen_b = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while partitions(&b).len() < 2 {
        assert!(Instant::now() < deadline, "B owns {:?}", partitions(&b));
        seen_a.extend(a.poll(Duration::from_millis(100)).await.unwrap().iter().map(key));
        seen_b.extend(b.poll(Duration::from_millis(100)).await.unwrap().iter().map(key));
    }
    let moved: BTreeSet<u32> = listener.revoked.lock().unwrap().iter().map(|tp| tp.partition).collect();
    assert_eq!(moved, partitions(&b), "A was told exactly about the partitions B got");
    assert!(partitions(&a).is_disjoint(&moved));
    assert!(moved.iter().all(|p| a.position("events", *p).is_none()), "A forgot the positions it gave away");
    let offsets = committed(&client, "audit").await;
    for p in 0..4 {
        let expected = if moved.contains(&p) { Some(20) } else { None };
        assert_eq!(offsets[&p], expected, "partition {p}: the revoke committed A's position, nothing else");
    }

    // B starts exactly at A's commits: only new records, none A already processed.
    produce(&client, "events", &[(0, 5), (1, 5), (2, 5), (3, 5)]).await;
    let deadline = Instant::now() + PATIENCE;
    while seen_b.len() < 10 {
        assert!(Instant::now() < deadline, "B read {:?}", seen_b);
        seen_b.extend(b.poll(Duration::from_millis(200)).await.unwrap().iter().map(key));
        seen_a.extend(a.poll(Duration::from_millis(50)).await.unwrap().iter().map(key));
    }
    seen_b.sort_unstable();
    let expected: Vec<(u32, u64)> = moved.iter().flat_map(|&p| (20..25).map(move |o| (p, o))).collect();
    assert_eq!(seen_b, expected, "B continues after A's committed offsets, no duplicates");

    // Fencing: A may no longer commit a partition that moved; the stream survives the refusal.
    let gone = TopicPartition::new("events", *moved.iter().next().unwrap());
    let err = a.commit_offsets([(gone, 0)]).await.unwrap_err();
    assert!(err.is_stale_generation(), "{err:?}");
    assert!(matches!(err, strata_client::ClientError::Server { code: tonic::Code::FailedPrecondition, .. }));
    assert!(a.generation() > generation_before);
    a.commit().await.unwrap();
    let kept = committed(&client, "audit").await;
    assert!(
        partitions(&a).iter().all(|&p| kept[&p].is_some() && kept[&p] == a.position("events", p)),
        "A still commits its own partitions: {kept:?}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_eager_assignor_partitions_move_at_once_and_the_revoke_commit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("eager", 2, HashMap::new()).await.unwrap();
    produce(&client, "eager", &[(0, 10), (1, 10)]).await;
    let range = || GroupConfig { assignor: Some("range".into()), ..manual("ranged", "eager") };

    let listener = CommitOnRevoke::default();
    let mut a = client.group_consumer_with_listener(range(), listener.clone()).await.unwrap();
    let mut seen_a = 0;
    let deadline = Instant::now() + PATIENCE;
    while seen_a < 20 {
        assert!(Instant::now() < deadline, "A read {seen_a} of 20");
        seen_a += a.poll(Duration::from_millis(200)).await.unwrap().len();
    }
    let mut b = client.group_consumer(range()).await.unwrap();
    assert_eq!(partitions(&b).len(), 1, "eager: B gets its partition at once, without waiting for A");
    let moved = *partitions(&b).iter().next().unwrap();
    // A hears of it on its next poll; the listener's commit comes too late and is refused.
    let deadline = Instant::now() + PATIENCE;
    let err = loop {
        assert!(Instant::now() < deadline, "A never lost partition {moved}");
        match a.poll(Duration::from_millis(100)).await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(err.is_stale_generation(), "{err:?}");
    assert_eq!(listener.revoked.lock().unwrap().iter().map(|tp| tp.partition).collect::<Vec<_>>(), vec![moved]);
    assert_eq!(partitions(&a).len(), 1);
    a.poll(Duration::from_millis(50)).await.unwrap();
    // The price: B reads the moved partition again from the start (nothing was committed).
    let mut seen_b = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while seen_b.len() < 10 {
        assert!(Instant::now() < deadline, "B read {seen_b:?}");
        seen_b.extend(b.poll(Duration::from_millis(200)).await.unwrap().iter().map(key));
    }
    assert_eq!(seen_b, (0..10).map(|o| (moved, o)).collect::<Vec<_>>(), "duplicates of what A processed");
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Reads the stream until a message that is not `records`.
async fn next_control(stream: &mut tonic::Streaming<proto::SubscribeResponse>) -> proto::subscribe_response::Kind {
    use proto::subscribe_response::Kind;
    loop {
        let msg = tokio::time::timeout(PATIENCE, stream.message()).await.unwrap().unwrap().unwrap();
        match msg.kind.unwrap() {
            Kind::Records(_) => continue,
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_under_an_old_generation_for_a_partition_that_moved_is_refused() {
    use proto::subscribe_request::Kind as Req;
    use proto::subscribe_response::Kind;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("fenced", 2, HashMap::new()).await.unwrap();
    produce(&client, "fenced", &[(0, 3), (1, 3)]).await;

    // A raw stream member, to speak for an old generation on purpose.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let join = proto::JoinGroup { group: "fence".into(), topics: vec!["fenced".into()], ..Default::default() };
    tx.send(proto::SubscribeRequest { kind: Some(Req::Join(join)) }).await.unwrap();
    let mut raw = proto::consumer_client::ConsumerClient::connect(s.url.clone()).await.unwrap();
    let mut stream = raw.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let Kind::Assignment(first) = next_control(&mut stream).await else { panic!("assignment first") };
    assert_eq!(first.partitions.len(), 2);
    tx.send(proto::SubscribeRequest { kind: Some(Req::Ack(proto::AssignmentAck { generation: first.generation })) })
        .await
        .unwrap();

    // B joins; the raw member is told one partition is revoking, acks, and loses it.
    let join_b = tokio::spawn({
        let client = client.clone();
        async move { client.group_consumer(manual("fence", "fenced")).await.unwrap() }
    });
    let mut current = first.clone();
    let deadline = Instant::now() + PATIENCE;
    while current.partitions.len() != 1 || !current.revoking.is_empty() {
        assert!(Instant::now() < deadline, "never lost a partition: {current:?}");
        if let Kind::Assignment(a) = next_control(&mut stream).await {
            tx.send(proto::SubscribeRequest {
                kind: Some(Req::Ack(proto::AssignmentAck { generation: a.generation })),
            })
            .await
            .unwrap();
            current = a;
        }
    }
    let mut b = join_b.await.unwrap();
    let kept = current.partitions[0].partition;
    let moved = 1 - kept;

    let commit = |id: u64, partition: u32| proto::SubscribeRequest {
        kind: Some(Req::Commit(proto::CommitOffsets {
            id,
            generation: first.generation,
            offsets: vec![proto::PartitionOffset { topic: "fenced".into(), partition, offset: 1 }],
        })),
    };
    tx.send(commit(1, moved)).await.unwrap();
    let Kind::CommitResult(refused) = next_control(&mut stream).await else { panic!("commit result expected") };
    assert_eq!(refused.id, 1);
    assert_eq!(refused.error.map(|e| e.code).as_deref(), Some("stale_generation"), "old generation, moved partition");
    // Cooperative (sticky): the old generation still speaks for a partition that did not move.
    tx.send(commit(2, kept)).await.unwrap();
    let Kind::CommitResult(accepted) = next_control(&mut stream).await else { panic!("commit result expected") };
    assert_eq!((accepted.id, accepted.error), (2, None));
    assert_eq!(committed(&client, "fence").await[&kept], Some(1));
    assert_eq!(committed(&client, "fence").await[&moved], None);
    drop(tx);
    drop(stream);
    // B owns the moved partition and reads it from the start (nothing committed there).
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 3 || !partitions(&b).contains(&moved) {
        assert!(Instant::now() < deadline, "B read {seen:?}");
        seen.extend(b.poll(Duration::from_millis(200)).await.unwrap().iter().map(key).filter(|k| k.0 == moved));
    }
    assert_eq!(seen, vec![(moved, 0), (moved, 1), (moved, 2)]);
    b.close().await.unwrap();
}

fn strata(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env("STRATA_SERVER", url).output().unwrap()
}

fn json_lines(out: &[u8]) -> Vec<(u32, u64)> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["partition"].as_u64().unwrap() as u32, v["offset"].as_u64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_consume_with_a_group_continues_after_the_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = Client::connect(&s.url).await.unwrap();
    client.admin().create_topic("lines", 2, HashMap::new()).await.unwrap();
    produce(&client, "lines", &[(0, 5), (1, 5)]).await;
    let url = s.url.clone();

    // Auto commit (default): commits what was printed when it stops after --max.
    let first = tokio::task::spawn_blocking({
        let url = url.clone();
        move || strata(&url, &["consume", "lines", "--group", "cli", "--max", "4", "--format", "json"])
    })
    .await
    .unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first_seen = json_lines(&first.stdout);
    assert_eq!(first_seen.len(), 4, "{}", String::from_utf8_lossy(&first.stdout));
    let offsets = committed(&client, "cli").await;
    assert_eq!(offsets.values().map(|c| c.unwrap_or(0)).sum::<u64>(), 4, "committed what was printed: {offsets:?}");

    // Manual commit: the second run continues after the first one's commits.
    let second = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            strata(
                &url,
                &["consume", "lines", "--group", "cli", "--commit", "manual", "--max", "6", "--format", "json"],
            )
        }
    })
    .await
    .unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let mut all: Vec<(u32, u64)> = first_seen.into_iter().chain(json_lines(&second.stdout)).collect();
    all.sort_unstable();
    let expected: Vec<(u32, u64)> = (0..2).flat_map(|p| (0..5).map(move |o| (p, o))).collect();
    assert_eq!(all, expected, "the two runs read every record once");
    assert_eq!(committed(&client, "cli").await, BTreeMap::from([(0, Some(5)), (1, Some(5))]));

    // Without --max it follows until Ctrl-C, then commits, leaves and exits 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["consume", "lines", "--group", "tail", "--from", "earliest"])
        .env("STRATA_SERVER", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().take(10).map(Result::unwrap).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 10);
    assert!(lines.contains(&"p1-4".to_string()), "text format prints values: {lines:?}");
    let members = client.admin().describe_group("tail").await.unwrap().members.len();
    assert_eq!(members, 1);
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("consumed 10 records"), "{stderr}");
    let info = client.admin().describe_group("tail").await.unwrap();
    assert!(info.members.is_empty(), "Ctrl-C left the group: {info:?}");
    assert_eq!(committed(&client, "tail").await, BTreeMap::from([(0, Some(5)), (1, Some(5))]));

    let bad = strata(&url, &["consume", "lines", "--group", "cli", "--from", "3"]);
    assert!(!bad.status.success());
    let bad = strata(&url, &["consume", "lines", "--commit", "manual", "--max", "1"]);
    assert!(!bad.status.success(), "--commit without --group");
}
