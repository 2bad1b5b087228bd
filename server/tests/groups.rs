//! Consumer groups over plain HTTP requests against a real server: join, fetch by member,
//! commit, generation fencing, cooperative hand-over, leave, session expiry, and groups with
//! their committed offsets surviving a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Server, create_topic, get, post_json, produce, request};
use serde_json::{Value, json};

fn join(url: &str, group: &str, body: Value) -> Value {
    let r = post_json(&format!("{url}/v1/groups/{group}/members"), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn assignment(v: &Value) -> BTreeSet<u64> {
    v["assignment"].as_array().unwrap().iter().map(|tp| tp["partition"].as_u64().unwrap()).collect()
}

#[test]
fn group_membership_fetch_commit_and_fencing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "orders", 4, json!({}));
    for p in 0..4 {
        let records: Vec<Value> = (0..10).map(|i| json!({"value": format!("p{p}-{i}"), "partition": p})).collect();
        produce(&s.url, "orders", json!({"records": records}));
    }
    let a =
        join(&s.url, "billing", json!({"topics": ["orders"], "assignor": "range", "auto_offset_reset": "earliest"}));
    let a_id = a["member_id"].as_str().unwrap().to_string();
    assert_eq!((a["generation"].as_u64(), assignment(&a).len()), (Some(1), 4));

    let page = get(&format!("{}/v1/groups/billing/members/{a_id}/records?max_records=100", s.url)).json();
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 40);
    for p in 0..4u64 {
        let offsets: Vec<u64> =
            records.iter().filter(|r| r["partition"] == p).map(|r| r["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>(), "partition {p}: contiguous, in order");
    }
    // The next fetch continues after what was delivered.
    let again = get(&format!("{}/v1/groups/billing/members/{a_id}/records?wait_ms=100", s.url)).json();
    assert_eq!(again["records"].as_array().unwrap().len(), 0);

    let offsets: Vec<Value> = (0..4).map(|p| json!({"topic": "orders", "partition": p, "offset": 10})).collect();
    let ok = post_json(
        &format!("{}/v1/groups/billing/offsets", s.url),
        &json!({"member_id": a_id, "generation": 1, "offsets": offsets}),
    );
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));

    // B joins: generation 2, the partitions split, and A's generation 1 is fenced.
    let b = join(&s.url, "billing", json!({"topics": ["orders"], "assignor": "range"}));
    let b_id = b["member_id"].as_str().unwrap().to_string();
    assert_eq!(b["generation"], 2);
    let stale = post_json(
        &format!("{}/v1/groups/billing/offsets", s.url),
        &json!({"member_id": a_id, "generation": 1, "offsets": [{"topic": "orders", "partition": 0, "offset": 10}]}),
    );
    assert_eq!((stale.status, stale.json()["code"].as_str().unwrap()), (409, "stale_generation"));
    let hb = post_json(&format!("{}/v1/groups/billing/members/{a_id}/heartbeat", s.url), &json!({})).json();
    assert_eq!(hb["generation"], 2);
    let (mine, theirs) = (assignment(&hb), assignment(&b));
    assert_eq!(mine.len() + theirs.len(), 4);
    assert!(mine.is_disjoint(&theirs), "no partition has two owners");
    let not_mine = *theirs.iter().next().unwrap();
    let foreign = post_json(
        &format!("{}/v1/groups/billing/offsets", s.url),
        &json!({"member_id": a_id, "generation": 2, "offsets": [{"topic": "orders", "partition": not_mine, "offset": 3}]}),
    );
    assert_eq!(foreign.status, 409, "a partition the member does not own");
    let mine_p = *mine.iter().next().unwrap();
    let beyond = post_json(
        &format!("{}/v1/groups/billing/offsets", s.url),
        &json!({"member_id": a_id, "generation": 2, "offsets": [{"topic": "orders", "partition": mine_p, "offset": 11}]}),
    );
    assert_eq!(
        (
            beyond.status,
            beyond.json()["code"].as_str().unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&beyond.body)))
        ),
        (416, "offset_out_of_range"),
        "beyond the high watermark"
    );
    let negative = post_json(
        &format!("{}/v1/groups/billing/offsets", s.url),
        &json!({"member_id": a_id, "generation": 2, "offsets": [{"topic": "orders", "partition": mine_p, "offset": -1}]}),
    );
    assert_eq!(negative.status, 400, "negative offsets do not parse");
    let unknown_assignor = post_json(
        &format!("{}/v1/groups/billing/members", s.url),
        &json!({"topics": ["orders"], "assignor": "random"}),
    );
    assert_eq!(unknown_assignor.status, 400);
    // B starts from the committed offsets: nothing new to read.
    let b_page = get(&format!("{}/v1/groups/billing/members/{b_id}/records", s.url)).json();
    assert_eq!(b_page["records"].as_array().unwrap().len(), 0);

    let unknown = post_json(&format!("{}/v1/groups/billing/members/nobody/heartbeat", s.url), &json!({}));
    assert_eq!((unknown.status, unknown.json()["code"].as_str().unwrap()), (404, "unknown_member"));

    assert_eq!(request("DELETE", &format!("{}/v1/groups/billing/members/{b_id}", s.url), &json!(null)).status, 204);
    let hb = post_json(&format!("{}/v1/groups/billing/members/{a_id}/heartbeat", s.url), &json!({})).json();
    assert_eq!((hb["generation"].as_u64(), assignment(&hb).len()), (Some(3), 4));

    let described = get(&format!("{}/v1/groups/billing", s.url)).json();
    assert_eq!(described["generation"], 3);
    assert_eq!(described["offsets"].as_array().unwrap().len(), 4);
    assert!(described["offsets"].as_array().unwrap().iter().all(|o| o["committed"] == 10 && o["lag"] == 0));
    assert!(get(&format!("{}/v1/groups", s.url)).json()["groups"].as_array().unwrap().contains(&json!("billing")));
    let metrics = String::from_utf8(get(&format!("{}/metrics", s.url)).body).unwrap();
    assert!(metrics.contains("strata_group_lag{group=\"billing\",topic=\"orders\",partition=\"0\"} 0"), "{metrics}");

    // A silent member is expelled after its session timeout.
    let c = join(&s.url, "short", json!({"topics": ["orders"], "session_timeout_ms": 1000}));
    std::thread::sleep(Duration::from_millis(1800));
    let gone = post_json(
        &format!("{}/v1/groups/short/members/{}/heartbeat", s.url, c["member_id"].as_str().unwrap()),
        &json!({}),
    );
    assert_eq!(gone.status, 404);

    // Committed offsets survive a restart.
    assert_eq!(s.terminate().code(), Some(0));
    let s = Server::start(dir.path());
    let described = get(&format!("{}/v1/groups/billing", s.url)).json();
    assert!(described["offsets"].as_array().unwrap().iter().all(|o| o["committed"] == 10), "{described}");
    let a2 = join(&s.url, "billing", json!({"topics": ["orders"], "assignor": "range"}));
    let page =
        get(&format!("{}/v1/groups/billing/members/{}/records", s.url, a2["member_id"].as_str().unwrap())).json();
    assert_eq!(page["records"].as_array().unwrap().len(), 0, "resumes at the committed offsets");
}

#[test]
fn auto_commit_reset_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "events", 1, json!({}));
    produce(&s.url, "events", json!({"records": (0..5).map(|i| json!({"value": i})).collect::<Vec<_>>()}));
    let m = join(
        &s.url,
        "audit",
        json!({"topics": ["events"], "auto_offset_reset": "earliest", "auto_commit_interval_ms": 500}),
    );
    let id = m["member_id"].as_str().unwrap().to_string();
    let committed = |s: &Server| get(&format!("{}/v1/groups/audit", s.url)).json()["offsets"][0]["committed"].clone();
    let page = get(&format!("{}/v1/groups/audit/members/{id}/records", s.url)).json();
    assert_eq!(page["records"].as_array().unwrap().len(), 5);
    assert_eq!(committed(&s), Value::Null, "nothing is committed before the interval passes");
    std::thread::sleep(Duration::from_millis(600));
    // This fetch commits what the previous one delivered (at-least-once), then reads on.
    get(&format!("{}/v1/groups/audit/members/{id}/records", s.url));
    assert_eq!(committed(&s), 5);

    let reset = |to: Value| {
        post_json(&format!("{}/v1/groups/audit/offsets/reset", s.url), &json!({"topic": "events", "to": to}))
    };
    let busy = reset(json!("earliest"));
    assert_eq!((busy.status, busy.json()["code"].as_str().unwrap()), (409, "group_not_empty"));
    assert_eq!(request("DELETE", &format!("{}/v1/groups/audit", s.url), &json!(null)).status, 409);
    assert_eq!(request("DELETE", &format!("{}/v1/groups/audit/members/{id}", s.url), &json!(null)).status, 204);
    assert_eq!(reset(json!("earliest")).status, 200);
    assert_eq!(committed(&s), 0);
    assert_eq!(reset(json!({"offset": 3})).json()["offsets"][0]["offset"], 3);
    assert_eq!(committed(&s), 3);
    assert_eq!(reset(json!("latest")).status, 200);
    assert_eq!(committed(&s), 5);
    assert_eq!(reset(json!("sideways")).status, 400);
    // The same through the CLI (gRPC Admin).
    let strata = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .env("STRATA_SERVER", &s.url)
            .output()
            .unwrap()
    };
    let described = strata(&["group", "describe", "audit"]);
    assert!(described.status.success(), "{}", String::from_utf8_lossy(&described.stderr));
    let text = String::from_utf8(described.stdout).unwrap();
    assert!(text.contains("state=empty") && text.contains("events"), "{text}");
    let reset_cli = strata(&["group", "reset-offsets", "audit", "--topic", "events", "--to", "1"]);
    assert_eq!(String::from_utf8(reset_cli.stdout).unwrap(), "events/0\t1\n");
    assert_eq!(committed(&s), 1);
    assert!(String::from_utf8(strata(&["group", "list"]).stdout).unwrap().lines().any(|l| l == "audit"));
    assert_eq!(request("DELETE", &format!("{}/v1/groups/audit", s.url), &json!(null)).status, 204);
    assert_eq!(get(&format!("{}/v1/groups/audit", s.url)).status, 404);
}

fn heartbeat(url: &str, group: &str, member: &str) -> Value {
    let r = post_json(&format!("{url}/v1/groups/{group}/members/{member}/heartbeat"), &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn partitions_of(v: &Value, field: &str) -> BTreeSet<u64> {
    v[field].as_array().unwrap().iter().map(|tp| tp["partition"].as_u64().unwrap()).collect()
}

fn commit(url: &str, group: &str, member: &str, generation: &Value, offsets: &[(u64, u64)]) -> common::Reply {
    let offsets: Vec<Value> =
        offsets.iter().map(|(p, o)| json!({"topic": "orders", "partition": p, "offset": o})).collect();
    post_json(
        &format!("{url}/v1/groups/{group}/offsets"),
        &json!({"member_id": member, "generation": generation, "offsets": offsets}),
    )
}

#[test]
fn sticky_hands_partitions_over_only_after_the_old_owner_could_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "orders", 4, json!({}));
    for p in 0..4 {
        let records: Vec<Value> = (0..10).map(|i| json!({"value": i, "partition": p})).collect();
        produce(&s.url, "orders", json!({"records": records}));
    }
    let a = join(&s.url, "coop", json!({"topics": ["orders"], "auto_offset_reset": "earliest"}));
    let a_id = a["member_id"].as_str().unwrap().to_string();
    let page = get(&format!("{}/v1/groups/coop/members/{a_id}/records?max_records=100", s.url)).json();
    assert_eq!(page["records"].as_array().unwrap().len(), 40);

    // B joins: nothing is taken from A yet.
    let b = join(&s.url, "coop", json!({"topics": ["orders"]}));
    let b_id = b["member_id"].as_str().unwrap().to_string();
    assert_eq!((assignment(&b).len(), b["rebalancing"].as_bool()), (0, Some(true)));
    assert_eq!(get(&format!("{}/v1/groups/coop", s.url)).json()["state"], "rebalancing");
    // A learns what it is losing; it still owns those partitions and commits its progress.
    let told = heartbeat(&s.url, "coop", &a_id);
    let (kept, revoking) = (partitions_of(&told, "assignment"), partitions_of(&told, "revoking"));
    assert_eq!((kept.len(), revoking.len()), (2, 2), "{told}");
    let all: Vec<(u64, u64)> = (0..4).map(|p| (p, 10)).collect();
    let c = commit(&s.url, "coop", &a_id, &told["generation"], &all);
    assert_eq!(c.status, 200, "{}", String::from_utf8_lossy(&c.body));
    // Its next heartbeat hands them over; B starts exactly at A's commits.
    let after = heartbeat(&s.url, "coop", &a_id);
    assert_eq!((partitions_of(&after, "assignment"), after["revoking"].as_array().unwrap().len()), (kept, 0));
    let b2 = heartbeat(&s.url, "coop", &b_id);
    assert_eq!(partitions_of(&b2, "assignment"), revoking);
    assert_eq!(b2["rebalancing"], false);
    let b_page = get(&format!("{}/v1/groups/coop/members/{b_id}/records?wait_ms=100", s.url)).json();
    assert_eq!(b_page["records"].as_array().unwrap().len(), 0, "no record is delivered twice");
    // Now A's commit of a partition that moved is refused.
    let moved = *revoking.iter().next().unwrap();
    let refused = commit(&s.url, "coop", &a_id, &after["generation"], &[(moved, 10)]);
    assert_eq!((refused.status, refused.json()["code"].as_str().unwrap()), (409, "stale_generation"));
}

#[test]
fn members_generation_and_assignment_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "orders", 4, json!({}));
    produce(
        &s.url,
        "orders",
        json!({"records": (0..4).map(|p| json!({"value": p, "partition": p})).collect::<Vec<_>>()}),
    );
    let a = join(&s.url, "kept", json!({"topics": ["orders"], "assignor": "range", "auto_offset_reset": "earliest"}));
    let b = join(&s.url, "kept", json!({"topics": ["orders"], "assignor": "range", "auto_offset_reset": "earliest"}));
    let (a_id, b_id) = (a["member_id"].as_str().unwrap().to_string(), b["member_id"].as_str().unwrap().to_string());
    let a_now = heartbeat(&s.url, "kept", &a_id);
    let owned: Vec<(u64, u64)> = partitions_of(&a_now, "assignment").into_iter().map(|p| (p, 1)).collect();
    assert_eq!(commit(&s.url, "kept", &a_id, &a_now["generation"], &owned).status, 200);
    let before = get(&format!("{}/v1/groups/kept", s.url)).json();

    assert_eq!(s.terminate().code(), Some(0));
    let s = Server::start(dir.path());
    let after = get(&format!("{}/v1/groups/kept", s.url)).json();
    for field in ["generation", "members", "assignor", "offsets"] {
        assert_eq!(before[field], after[field], "{field} after the restart");
    }
    // The same members go on with the same ids, assignment and generation.
    let a2 = heartbeat(&s.url, "kept", &a_id);
    assert_eq!(
        (a2["generation"].clone(), a2["assignment"].clone()),
        (a_now["generation"].clone(), a_now["assignment"].clone())
    );
    let page = get(&format!("{}/v1/groups/kept/members/{a_id}/records?wait_ms=100", s.url)).json();
    assert_eq!(page["records"].as_array().unwrap().len(), 0, "A resumes after its commits");
    let b_page = get(&format!("{}/v1/groups/kept/members/{b_id}/records?wait_ms=100", s.url)).json();
    assert_eq!(b_page["records"].as_array().unwrap().len(), 2, "B had committed nothing");
    // A new member gets a new id and a new generation.
    let c = join(&s.url, "kept", json!({"topics": ["orders"], "assignor": "range"}));
    assert!(c["member_id"] != a["member_id"] && c["member_id"] != b["member_id"]);
    assert_eq!(c["generation"].as_u64().unwrap(), a_now["generation"].as_u64().unwrap() + 1);
}

#[test]
fn a_member_resets_the_offsets_of_its_own_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "orders", 2, json!({}));
    for p in 0..2 {
        produce(
            &s.url,
            "orders",
            json!({"records": (0..5).map(|i| json!({"value": i, "partition": p})).collect::<Vec<_>>()}),
        );
    }
    let a = join(&s.url, "seek", json!({"topics": ["orders"], "assignor": "range", "auto_offset_reset": "earliest"}));
    let a_id = a["member_id"].as_str().unwrap().to_string();
    let first = get(&format!("{}/v1/groups/seek/members/{a_id}/records", s.url)).json();
    assert_eq!(first["records"].as_array().unwrap().len(), 10);
    let reset = |member: &str, generation: &Value| {
        post_json(
            &format!("{}/v1/groups/seek/offsets/reset", s.url),
            &json!({"topic": "orders", "to": {"offset": 3}, "member_id": member, "generation": generation}),
        )
    };
    let r = reset(&a_id, &a["generation"]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["offsets"].as_array().unwrap().len(), 2);
    let again = get(&format!("{}/v1/groups/seek/members/{a_id}/records", s.url)).json();
    let offsets: Vec<u64> =
        again["records"].as_array().unwrap().iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![3, 4, 3, 4], "both partitions re-read from offset 3");
    // B owns one partition now; it may reset only that one, and A's old generation is refused.
    let b = join(&s.url, "seek", json!({"topics": ["orders"], "assignor": "range"}));
    let rb = reset(b["member_id"].as_str().unwrap(), &b["generation"]);
    assert_eq!((rb.status, rb.json()["offsets"].as_array().unwrap().len()), (200, 1));
    let stale = reset(&a_id, &a["generation"]);
    assert_eq!((stale.status, stale.json()["code"].as_str().unwrap()), (409, "stale_generation"));
    let half = post_json(
        &format!("{}/v1/groups/seek/offsets/reset", s.url),
        &json!({"topic": "orders", "to": "earliest", "member_id": a_id}),
    );
    assert_eq!(half.status, 400);
}

/// Reads `n` SSE event ids from a stream (blocking).
fn sse_ids(url: &str, last_event_id: Option<&str>, n: usize) -> Vec<String> {
    use std::io::BufRead;
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(20))).build().into();
    let mut req = agent.get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let response = req.call().unwrap();
    assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    let mut ids = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
            ids.push(id.to_string());
            if ids.len() == n {
                break;
            }
        }
    }
    ids
}

#[test]
fn server_sent_events_push_records_and_resume_after_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "feed", 1, json!({}));
    produce(&s.url, "feed", json!({"records": (0..3).map(|i| json!({"value": i})).collect::<Vec<_>>()}));
    let m = join(&s.url, "ui", json!({"topics": ["feed"], "auto_offset_reset": "earliest"}));
    let stream_url = format!("{}/v1/groups/ui/members/{}/stream", s.url, m["member_id"].as_str().unwrap());
    // Records produced while the stream is open arrive as well.
    let url = s.url.clone();
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        produce(&url, "feed", json!({"records": [{"value": 3}, {"value": 4}]}));
    });
    let ids = sse_ids(&stream_url, None, 5);
    later.join().unwrap();
    assert_eq!(ids, (0..5).map(|o| format!("feed/0/{o}")).collect::<Vec<_>>());
    // Reconnecting with Last-Event-ID resumes right after it.
    let resumed = sse_ids(&stream_url, Some("feed/0/1"), 3);
    assert_eq!(resumed, vec!["feed/0/2", "feed/0/3", "feed/0/4"]);
    let bad = common::get(&format!("{}/v1/groups/ui/members/nobody/stream", s.url));
    assert_eq!(bad.status, 404);
}

#[test]
fn pattern_subscriptions_pick_up_new_topics() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "logs-web", 1, json!({}));
    create_topic(&s.url, "metrics", 1, json!({}));
    let m = join(&s.url, "ops", json!({"topics": ["logs-.*"], "assignor": "range"}));
    let id = m["member_id"].as_str().unwrap().to_string();
    let topics = |v: &Value| {
        v["assignment"]
            .as_array()
            .unwrap()
            .iter()
            .map(|tp| tp["topic"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(topics(&m), BTreeSet::from(["logs-web".to_string()]));
    create_topic(&s.url, "logs-db", 1, json!({}));
    // The coordinator notices the new matching topic within a tick or two.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let hb = post_json(&format!("{}/v1/groups/ops/members/{id}/heartbeat", s.url), &json!({})).json();
        seen = topics(&hb);
        if seen.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, BTreeSet::from(["logs-db".to_string(), "logs-web".to_string()]));
    let bad = post_json(&format!("{}/v1/groups/ops/members", s.url), &json!({"topics": ["logs-(["]}));
    assert_eq!((bad.status, bad.json()["code"].as_str().unwrap()), (400, "invalid_request"));
}

#[test]
fn offsets_of_an_empty_group_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &[("STRATA_GROUP_OFFSETS_RETENTION_MS", "1000")]);
    create_topic(&s.url, "t", 1, json!({}));
    produce(&s.url, "t", json!({"records": [{"value": 1}]}));
    let m = join(&s.url, "brief", json!({"topics": ["t"]}));
    let id = m["member_id"].as_str().unwrap().to_string();
    let commit = post_json(
        &format!("{}/v1/groups/brief/offsets", s.url),
        &json!({"member_id": id, "generation": m["generation"], "offsets": [{"topic": "t", "partition": 0, "offset": 1}]}),
    );
    assert_eq!(commit.status, 200);
    // While a member is alive (heartbeating), the offsets stay.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(250));
        post_json(&format!("{}/v1/groups/brief/members/{id}/heartbeat", s.url), &json!({}));
    }
    assert_eq!(get(&format!("{}/v1/groups/brief", s.url)).json()["offsets"][0]["committed"], 1);
    assert_eq!(request("DELETE", &format!("{}/v1/groups/brief/members/{id}", s.url), &json!(null)).status, 204);
    let mut status = 200;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        status = get(&format!("{}/v1/groups/brief", s.url)).status;
        if status == 404 {
            break;
        }
    }
    assert_eq!(status, 404, "the empty group's offsets expired");
}

#[test]
fn a_member_that_vanishes_loses_its_partitions_and_the_next_resumes_from_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "jobs", 2, json!({}));
    for p in 0..2 {
        produce(
            &s.url,
            "jobs",
            json!({"records": (0..6).map(|i| json!({"value": format!("{p}-{i}"), "partition": p})).collect::<Vec<_>>()}),
        );
    }
    let a = join(
        &s.url,
        "workers",
        json!({"topics": ["jobs"], "auto_offset_reset": "earliest", "session_timeout_ms": 1000}),
    );
    let a_id = a["member_id"].as_str().unwrap().to_string();
    // A processes 4 records of each partition and commits after processing; then it vanishes.
    let page = get(&format!("{}/v1/groups/workers/members/{a_id}/records?max_records=100", s.url)).json();
    assert_eq!(page["records"].as_array().unwrap().len(), 12);
    let offsets: Vec<Value> = (0..2).map(|p| json!({"topic": "jobs", "partition": p, "offset": 4})).collect();
    assert_eq!(
        post_json(
            &format!("{}/v1/groups/workers/offsets", s.url),
            &json!({"member_id": a_id, "generation": a["generation"], "offsets": offsets})
        )
        .status,
        200
    );

    let b = join(&s.url, "workers", json!({"topics": ["jobs"], "session_timeout_ms": 10000}));
    let b_id = b["member_id"].as_str().unwrap().to_string();
    assert!(assignment(&b).len() < 2, "A still owns partitions until its session expires");
    let mut owned = BTreeSet::new();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        owned =
            assignment(&post_json(&format!("{}/v1/groups/workers/members/{b_id}/heartbeat", s.url), &json!({})).json());
        if owned.len() == 2 {
            break;
        }
    }
    assert_eq!(owned.len(), 2, "after A's session timeout B owns everything");
    // B resumes at A's commits: the uncommitted records 4 and 5 of each partition are redelivered.
    let page = get(&format!("{}/v1/groups/workers/members/{b_id}/records?max_records=100", s.url)).json();
    let mut got: Vec<String> =
        page["records"].as_array().unwrap().iter().map(|r| r["value"].as_str().unwrap().to_string()).collect();
    got.sort();
    assert_eq!(got, vec!["0-4", "0-5", "1-4", "1-5"]);
    let gone = post_json(&format!("{}/v1/groups/workers/members/{a_id}/heartbeat", s.url), &json!({}));
    assert_eq!((gone.status, gone.json()["code"].as_str().unwrap()), (404, "unknown_member"), "heartbeat after expiry");
}

/// A record as one member processed it.
#[derive(Debug, Clone)]
struct Processed {
    partition: u32,
    offset: u64,
    key: String,
    /// The member's run: a new one starts after each refused commit (a rebalance took partitions).
    run: usize,
    /// Whether the commit covering it was accepted.
    committed: bool,
}

/// One member's loop: fetch, process (record it), commit after processing; stop when told.
fn run_member(url: String, group: &'static str, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<Processed> {
    use std::sync::atomic::Ordering;
    let m = join(&url, group, json!({"topics": ["churn"], "assignor": "sticky", "auto_offset_reset": "earliest"}));
    let id = m["member_id"].as_str().unwrap().to_string();
    let mut generation = m["generation"].as_u64().unwrap();
    let mut processed: Vec<Processed> = Vec::new();
    let mut run = 0;
    while !stop.load(Ordering::Relaxed) {
        let page = get(&format!("{url}/v1/groups/{group}/members/{id}/records?max_records=50&wait_ms=100"));
        assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
        let records = page.json()["records"].as_array().unwrap().clone();
        let mut next: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        let page_start = processed.len();
        for r in &records {
            let (p, o) = (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap());
            let key = r["key"].as_str().unwrap().to_string();
            processed.push(Processed { partition: p as u32, offset: o, key, run, committed: true });
            next.insert(p, o + 1);
        }
        if !next.is_empty() {
            let offsets: Vec<Value> =
                next.iter().map(|(p, o)| json!({"topic": "churn", "partition": p, "offset": o})).collect();
            let c = post_json(
                &format!("{url}/v1/groups/{group}/offsets"),
                &json!({"member_id": id, "generation": generation, "offsets": offsets}),
            );
            if c.status == 409 {
                // A rebalance: learn the new generation; the uncommitted records may be redelivered.
                for p in &mut processed[page_start..] {
                    p.committed = false;
                }
                run += 1;
                generation = post_json(&format!("{url}/v1/groups/{group}/members/{id}/heartbeat"), &json!({})).json()["generation"].as_u64().unwrap();
            } else {
                assert_eq!(c.status, 200, "{}", String::from_utf8_lossy(&c.body));
            }
        }
    }
    assert_eq!(request("DELETE", &format!("{url}/v1/groups/{group}/members/{id}"), &json!(null)).status, 204);
    processed
}

#[test]
fn scaling_members_while_consuming_misses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "churn", 4, json!({"flush": "never"}));
    let total = 20_000;
    for chunk in 0..(total / 1000) {
        let records: Vec<Value> = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                json!({"key": format!("k{}", n % 97), "value": n})
            })
            .collect();
        produce(&s.url, "churn", json!({"records": records}));
    }
    type Running = (Arc<AtomicBool>, std::thread::JoinHandle<Vec<Processed>>);
    let mut members: Vec<Running> = Vec::new();
    let mut runs = Vec::new();
    for target in [1usize, 2, 3, 4, 6, 3] {
        while members.len() < target {
            let stop = Arc::new(AtomicBool::new(false));
            let (url, flag) = (s.url.clone(), Arc::clone(&stop));
            members.push((stop, std::thread::spawn(move || run_member(url, "churners", flag))));
        }
        while members.len() > target {
            let (stop, handle) = members.remove(0);
            stop.store(true, Ordering::Relaxed);
            runs.push(handle.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    // Let the last members drain the topic.
    for _ in 0..100 {
        let d = get(&format!("{}/v1/groups/churners", s.url)).json();
        if d["offsets"].as_array().unwrap().iter().map(|o| o["lag"].as_u64().unwrap()).sum::<u64>() == 0
            && d["offsets"].as_array().unwrap().len() == 4
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (stop, handle) in members {
        stop.store(true, Ordering::Relaxed);
        runs.push(handle.join().unwrap());
    }
    let seen: BTreeSet<(u32, u64)> = runs.iter().flatten().map(|r| (r.partition, r.offset)).collect();
    let processed: usize = runs.iter().map(Vec::len).sum();
    eprintln!("{processed} records processed for {total} produced ({} redelivered)", processed - seen.len());
    assert_eq!(seen.len(), total, "every record processed at least once, none missed");
    // Duplicates only in the uncommitted window: a record processed with an accepted commit is
    // never delivered again.
    let mut committed_once: BTreeSet<(u32, u64)> = BTreeSet::new();
    for r in runs.iter().flatten().filter(|r| r.committed) {
        assert!(committed_once.insert((r.partition, r.offset)), "{r:?} was processed again after a commit");
    }
    // Per-key order within each member's run.
    for member in &runs {
        let mut last: std::collections::HashMap<(usize, &str), u64> = std::collections::HashMap::new();
        for r in member {
            if let Some(prev) = last.insert((r.run, r.key.as_str()), r.offset) {
                assert!(prev < r.offset, "key {} went from offset {prev} back to {} within one run", r.key, r.offset);
            }
        }
    }
}
