//! Partition assignors: `range` and `roundrobin` distribute exactly as Kafka's `RangeAssignor`
//! and `RoundRobinAssignor`; `sticky` keeps every partition with its current owner unless
//! balance requires moving it, so a cooperative rebalance revokes only what actually moves.
//!
//! Assignors are pure functions of the members' subscriptions, the topics' partition counts and
//! (for `sticky`) the previous assignment: the coordinator calls them, tests call them directly.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type TopicPartition = (String, u32);

/// Member id → the partitions it owns, each list sorted.
pub type Assignment = BTreeMap<String, Vec<TopicPartition>>;

/// Which assignor a group uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Range,
    RoundRobin,
    Sticky,
}

impl Strategy {
    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "roundrobin",
            Strategy::Sticky => "sticky",
        }
    }

    /// Parses the API name (`range`, `roundrobin`, `sticky`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "range" => Some(Strategy::Range),
            "roundrobin" => Some(Strategy::RoundRobin),
            "sticky" => Some(Strategy::Sticky),
            _ => None,
        }
    }
}

/// Assigns the partitions of the subscribed topics to `members` (member id → subscribed topics).
/// `partitions` gives each topic's partition count (topics missing from it have none).
/// `previous` is only used by `sticky`. Every member appears in the result, possibly empty.
pub fn assign(
    strategy: Strategy,
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut out: Assignment = members.keys().map(|m| (m.clone(), Vec::new())).collect();
    match strategy {
        Strategy::Range => range(members, partitions, &mut out),
        Strategy::RoundRobin => round_robin(members, partitions, &mut out),
        Strategy::Sticky => sticky(members, partitions, previous, &mut out),
    }
    for owned in out.values_mut() {
        owned.sort();
    }
    out
}

/// Kafka's RangeAssignor: per topic, the sorted subscribers get consecutive ranges; the first
/// `partitions % subscribers` of them get one extra.
fn range(members: &BTreeMap<String, BTreeSet<String>>, partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    for topic in topics {
        let count = partitions.get(topic).copied().unwrap_or(0);
        let subscribers: Vec<&String> = members.iter().filter(|(_, t)| t.contains(topic)).map(|(m, _)| m).collect();
        let n = subscribers.len() as u32;
        if n == 0 {
            continue;
        }
        let (per, extra) = (count / n, count % n);
        for (i, member) in subscribers.into_iter().enumerate() {
            let i = i as u32;
            let start = per * i + i.min(extra);
            let len = per + u32::from(i < extra);
            if let Some(owned) = out.get_mut(member) {
                owned.extend((start..start + len).map(|p| (topic.clone(), p)));
            }
        }
    }
}

/// Kafka's RoundRobinAssignor: all partitions sorted by topic then number, dealt to the sorted
/// members in turn, skipping members not subscribed to the partition's topic.
fn round_robin(members: &BTreeMap<String, BTreeSet<String>>, partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    let ids: Vec<&String> = members.keys().collect();
    if ids.is_empty() {
        return;
    }
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    let mut next = 0usize;
    for topic in topics {
        for p in 0..partitions.get(topic).copied().unwrap_or(0) {
            // Someone subscribes to `topic` (it came from a subscription), so this ends.
            while !members[ids[next % ids.len()]].contains(topic) {
                next += 1;
            }
            if let Some(owned) = out.get_mut(ids[next % ids.len()]) {
                owned.push((topic.clone(), p));
            }
            next += 1;
        }
    }
}

/// Sticky: previous owners keep their partitions up to their fair share; the rest go to the
/// eligible member with the fewest partitions (ties: member id). Counts among members with the
/// same subscriptions differ by at most one.
fn sticky(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
    out: &mut Assignment,
) {
    let all: Vec<TopicPartition> = members
        .values()
        .flatten()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .flat_map(|t| (0..partitions.get(t).copied().unwrap_or(0)).map(move |p| (t.clone(), p)))
        .collect();
    if members.is_empty() {
        return;
    }
    // Fair share for members: floor or ceil of partitions over members, computed over the
    // members eligible for at least one partition.
    let total = all.len();
    let n = members.len();
    let (floor, mut ceil_slots) = (total / n, total % n);
    let mut quota: BTreeMap<&String, usize> = members.keys().map(|m| (m, floor)).collect();
    // Give the +1 slots to the members that already own the most (fewer moves).
    let mut by_owned: Vec<&String> = members.keys().collect();
    by_owned.sort_by_key(|m| std::cmp::Reverse(previous.get(*m).map_or(0, Vec::len)));
    for m in by_owned {
        if ceil_slots == 0 {
            break;
        }
        if let Some(q) = quota.get_mut(m) {
            *q += 1;
            ceil_slots -= 1;
        }
    }
    let mut owner: BTreeMap<TopicPartition, String> = BTreeMap::new();
    let wanted: BTreeSet<&TopicPartition> = all.iter().collect();
    for (member, owned) in previous {
        let Some(subs) = members.get(member) else { continue };
        for tp in owned {
            let has_room = out.get(member).map_or(0, Vec::len) < quota.get(member).copied().unwrap_or(0);
            if wanted.contains(tp) && subs.contains(&tp.0) && !owner.contains_key(tp) && has_room {
                owner.insert(tp.clone(), member.clone());
                if let Some(o) = out.get_mut(member) {
                    o.push(tp.clone());
                }
            }
        }
    }
    for tp in &all {
        if owner.contains_key(tp) {
            continue;
        }
        let target = members.iter().filter(|(_, subs)| subs.contains(&tp.0)).map(|(m, _)| m).min_by_key(|m| {
            let count = out.get(*m).map_or(0, Vec::len);
            let full = count >= quota.get(*m).copied().unwrap_or(0);
            (full, count, (*m).clone())
        });
        if let Some(m) = target {
            owner.insert(tp.clone(), m.clone());
            if let Some(o) = out.get_mut(m) {
                o.push(tp.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `"C0: t0 t1; C1: t0"` into subscriptions.
    fn members(spec: &str) -> BTreeMap<String, BTreeSet<String>> {
        spec.split(';')
            .map(|m| {
                let (id, topics) = m.split_once(':').unwrap();
                (id.trim().to_string(), topics.split_whitespace().map(str::to_string).collect())
            })
            .collect()
    }

    /// Renders an assignment as `"C0: t0-0 t0-1; C1: t0-2"`.
    fn render(a: &Assignment) -> String {
        a.iter()
            .map(|(m, tps)| {
                let parts: Vec<String> = tps.iter().map(|(t, p)| format!("{t}-{p}")).collect();
                format!("{m}:{}{}", if parts.is_empty() { "" } else { " " }, parts.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn parse_assignment(spec: &str) -> Assignment {
        spec.split(';')
            .map(|m| {
                let (id, tps) = m.split_once(':').unwrap();
                let tps = tps
                    .split_whitespace()
                    .map(|tp| {
                        let (t, p) = tp.rsplit_once('-').unwrap();
                        (t.to_string(), p.parse().unwrap())
                    })
                    .collect();
                (id.trim().to_string(), tps)
            })
            .collect()
    }

    /// Data-driven cases: strategy | partitions per topic | subscriptions | expected assignment.
    /// The range and roundrobin rows are what Kafka's RangeAssignor and RoundRobinAssignor produce.
    const CASES: &str = "
        range      | t0=4       | C0: t0                                  | C0: t0-0 t0-1 t0-2 t0-3
        range      | t0=4       | C0: t0; C1: t0                          | C0: t0-0 t0-1; C1: t0-2 t0-3
        range      | t0=4       | C0: t0; C1: t0; C2: t0                  | C0: t0-0 t0-1; C1: t0-2; C2: t0-3
        range      | t0=4       | C0: t0; C1: t0; C2: t0; C3: t0          | C0: t0-0; C1: t0-1; C2: t0-2; C3: t0-3
        range      | t0=4       | C0: t0; C1: t0; C2: t0; C3: t0; C4: t0; C5: t0 | C0: t0-0; C1: t0-1; C2: t0-2; C3: t0-3; C4:; C5:
        range      | t0=3 t1=3  | C0: t0 t1; C1: t0 t1                    | C0: t0-0 t0-1 t1-0 t1-1; C1: t0-2 t1-2
        range      | t0=3 t1=2  | C0: t0; C1: t0 t1                       | C0: t0-0 t0-1; C1: t0-2 t1-0 t1-1
        roundrobin | t0=4       | C0: t0                                  | C0: t0-0 t0-1 t0-2 t0-3
        roundrobin | t0=4       | C0: t0; C1: t0                          | C0: t0-0 t0-2; C1: t0-1 t0-3
        roundrobin | t0=4       | C0: t0; C1: t0; C2: t0                  | C0: t0-0 t0-3; C1: t0-1; C2: t0-2
        roundrobin | t0=4       | C0: t0; C1: t0; C2: t0; C3: t0          | C0: t0-0; C1: t0-1; C2: t0-2; C3: t0-3
        roundrobin | t0=4       | C0: t0; C1: t0; C2: t0; C3: t0; C4: t0; C5: t0 | C0: t0-0; C1: t0-1; C2: t0-2; C3: t0-3; C4:; C5:
        roundrobin | t0=3 t1=3  | C0: t0 t1; C1: t0 t1                    | C0: t0-0 t0-2 t1-1; C1: t0-1 t1-0 t1-2
        roundrobin | t0=1 t1=2 t2=3 | C0: t0; C1: t0 t1; C2: t0 t1 t2     | C0: t0-0; C1: t1-0; C2: t1-1 t2-0 t2-1 t2-2
        sticky     | t0=4       | C0: t0; C1: t0                          | C0: t0-0 t0-2; C1: t0-1 t0-3
    ";

    #[test]
    fn data_driven_cases() {
        for line in CASES.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let strategy = Strategy::parse(cols[0]).unwrap();
            let partitions: BTreeMap<String, u32> = cols[1]
                .split_whitespace()
                .map(|tp| {
                    let (t, n) = tp.split_once('=').unwrap();
                    (t.to_string(), n.parse().unwrap())
                })
                .collect();
            let got = assign(strategy, &members(cols[2]), &partitions, &Assignment::new());
            assert_eq!(render(&got), cols[3], "case: {line}");
        }
    }

    #[test]
    fn sticky_moves_only_what_balance_requires() {
        let partitions = BTreeMap::from([("t".to_string(), 6)]);
        let previous = parse_assignment("A: t-0 t-1 t-2; B: t-3 t-4 t-5");
        // C joins: each of A and B gives up exactly one partition; nothing else moves.
        let next = assign(Strategy::Sticky, &members("A: t; B: t; C: t"), &partitions, &previous);
        let kept = |m: &str| next[m].iter().filter(|tp| previous.get(m).is_some_and(|p| p.contains(tp))).count();
        assert_eq!((next["A"].len(), next["B"].len(), next["C"].len()), (2, 2, 2));
        assert_eq!((kept("A"), kept("B")), (2, 2), "{}", render(&next));
        // B leaves: A keeps all of its partitions, C keeps all of its, B's are shared out.
        let after = assign(Strategy::Sticky, &members("A: t; C: t"), &partitions, &next);
        assert!(next["A"].iter().all(|tp| after["A"].contains(tp)));
        assert!(next["C"].iter().all(|tp| after["C"].contains(tp)));
        assert_eq!((after["A"].len(), after["C"].len()), (3, 3));
    }

    #[test]
    fn every_partition_has_exactly_one_subscribed_owner() {
        let partitions = BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 3), ("c".to_string(), 0)]);
        let subs = members("m1: a; m2: a b; m3: b c; m4: a b c");
        for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            let got = assign(strategy, &subs, &partitions, &Assignment::new());
            let mut seen = BTreeSet::new();
            for (m, tps) in &got {
                for tp in tps {
                    assert!(subs[m].contains(&tp.0), "{strategy:?}: {m} got {tp:?} without subscribing");
                    assert!(seen.insert(tp.clone()), "{strategy:?}: {tp:?} has two owners");
                }
            }
            assert_eq!(seen.len(), 8, "{strategy:?}: every partition is owned");
        }
    }
}
