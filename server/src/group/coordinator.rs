//! The group coordinator as a sans-IO state machine: membership keyed by `member_id` and
//! `generation` (never by a connection), server-side assignment, session expiry and generation
//! fencing. A thin async task (with the metadata Raft group for persistence) will drive it; here
//! every input carries the time, so it is tested without tokio.
//!
//! Every join, leave, expiry or partition-count change that alters the assignment starts a new
//! generation, computed at once. Eager assignors (`range`, `roundrobin`) hand partitions over at
//! once and fence every request from an older generation.
//!
//! `sticky` is cooperative, in two steps. The assignor computes a *target*; a partition that must
//! move from a live member stays that member's (it may still commit it, but no longer reads it)
//! until the member has been told (a [`Group::poll`] notifies it) and has come back (the next
//! `poll` with `release`, or its session expiring). Only then does the partition go to its new
//! owner, in a new generation. Partitions that do not move keep flowing throughout, and a member
//! may go on using a stale generation for the partitions it still owns.

use std::collections::{BTreeMap, BTreeSet};

use super::assignor::{Assignment, Strategy, TopicPartition, assign};

/// Why a member's request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("member {0:?} is not in the group (it expired or left): join again")]
    UnknownMember(String),
    #[error("generation {given} is stale; the group is at generation {current}: heartbeat to learn it")]
    StaleGeneration { given: u64, current: u64 },
    #[error("member does not own {topic}/{partition} in generation {generation}")]
    NotOwner { topic: String, partition: u32, generation: u64 },
}

/// One member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub last_seen_ms: i64,
}

/// What a member learns from a join or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub generation: u64,
    /// The partitions to read.
    pub assignment: Vec<TopicPartition>,
    /// Partitions still owned (commits are accepted) but moving to another member: read no more
    /// from them, commit what was processed, and `poll` again to hand them over.
    pub revoking: Vec<TopicPartition>,
    /// Whether any partition of the group is moving.
    pub rebalancing: bool,
}

/// A consumer group's membership and assignment.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub strategy: Strategy,
    generation: u64,
    members: BTreeMap<String, Member>,
    /// Who owns what now: fencing checks this.
    assignment: Assignment,
    /// What the assignor wants; differs from `assignment` only while partitions are revoked.
    target: Assignment,
    /// Revoking partitions whose owner has been told: its next `poll` with release hands them over.
    notified: BTreeSet<TopicPartition>,
    next_member: u64,
    /// Bumped by every change worth persisting (members, assignment, generation).
    version: u64,
}

/// A group's state as persisted (session clocks are not: a restored member gets a fresh session).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupSnapshot {
    pub version: u64,
    pub strategy: String,
    pub generation: u64,
    pub next_member: u64,
    /// member → (subscribed topics, session timeout)
    pub members: BTreeMap<String, (BTreeSet<String>, u64)>,
    pub assignment: Assignment,
    pub target: Assignment,
}

impl Group {
    pub fn new(id: impl Into<String>, strategy: Strategy) -> Self {
        Self {
            id: id.into(),
            strategy,
            generation: 0,
            members: BTreeMap::new(),
            assignment: Assignment::new(),
            target: Assignment::new(),
            notified: BTreeSet::new(),
            next_member: 0,
            version: 0,
        }
    }

    /// Changes with every membership or assignment change.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            version: self.version,
            strategy: self.strategy.name().to_string(),
            generation: self.generation,
            next_member: self.next_member,
            members: self.members.values().map(|m| (m.id.clone(), (m.topics.clone(), m.session_timeout_ms))).collect(),
            assignment: self.assignment.clone(),
            target: self.target.clone(),
        }
    }

    /// A group as persisted; every member's session starts at `now_ms`.
    pub fn restore(id: impl Into<String>, snapshot: &GroupSnapshot, now_ms: i64) -> Self {
        Self {
            id: id.into(),
            strategy: Strategy::parse(&snapshot.strategy).unwrap_or(Strategy::Sticky),
            generation: snapshot.generation,
            members: snapshot
                .members
                .iter()
                .map(|(id, (topics, timeout))| {
                    let member = Member {
                        id: id.clone(),
                        topics: topics.clone(),
                        session_timeout_ms: *timeout,
                        last_seen_ms: now_ms,
                    };
                    (id.clone(), member)
                })
                .collect(),
            assignment: snapshot.assignment.clone(),
            target: snapshot.target.clone(),
            notified: BTreeSet::new(),
            next_member: snapshot.next_member,
            version: snapshot.version,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether any partition is waiting to move to its new owner.
    pub fn is_rebalancing(&self) -> bool {
        self.assignment != self.target
    }

    fn view(&self, member: &str) -> MemberView {
        let owned = self.assignment.get(member).map(Vec::as_slice).unwrap_or_default();
        let target = self.target.get(member).map(Vec::as_slice).unwrap_or_default();
        let (assignment, revoking) = owned.iter().cloned().partition(|tp| target.contains(tp));
        MemberView {
            member_id: member.to_string(),
            generation: self.generation,
            assignment,
            revoking,
            rebalancing: self.is_rebalancing(),
        }
    }

    /// Recomputes the target assignment and hands over what can move now; a new generation starts
    /// if anything changed.
    fn rebalance(&mut self, partitions: &BTreeMap<String, u32>) {
        let subscriptions: BTreeMap<String, BTreeSet<String>> =
            self.members.values().map(|m| (m.id.clone(), m.topics.clone())).collect();
        let mut target = assign(self.strategy, &subscriptions, partitions, &self.target);
        target.retain(|_, tps| !tps.is_empty());
        let assignment = if self.strategy == Strategy::Sticky {
            // Live members keep what they own (of topics they still read) until they release it.
            let mut next: Assignment = self
                .assignment
                .iter()
                .filter_map(|(m, tps)| {
                    let member = self.members.get(m)?;
                    let kept = tps
                        .iter()
                        .filter(|(t, p)| member.topics.contains(t) && partitions.get(t).is_some_and(|n| p < n))
                        .cloned()
                        .collect();
                    Some((m.clone(), kept))
                })
                .collect();
            Self::hand_over_free(&mut next, &target);
            next
        } else {
            target.clone()
        };
        let changed = assignment != self.assignment || target != self.target;
        let revoking: BTreeSet<&TopicPartition> = assignment
            .iter()
            .flat_map(|(m, tps)| {
                let wanted = target.get(m);
                tps.iter().filter(move |tp| !wanted.is_some_and(|t| t.contains(tp)))
            })
            .collect();
        self.notified.retain(|tp| revoking.contains(tp));
        self.assignment = assignment;
        self.target = target;
        if changed || self.generation == 0 {
            self.generation += 1;
            self.version += 1;
        }
    }

    /// Gives every partition of `target` that nobody in `owned` holds to its target owner.
    fn hand_over_free(owned: &mut Assignment, target: &Assignment) {
        let held: BTreeSet<TopicPartition> = owned.values().flatten().cloned().collect();
        for (m, tps) in target {
            let free = tps.iter().filter(|tp| !held.contains(*tp)).cloned();
            let entry = owned.entry(m.clone()).or_default();
            entry.extend(free);
            entry.sort();
        }
        owned.retain(|_, tps| !tps.is_empty());
    }

    /// A member checks in: keeps its session alive, hands over the revoked partitions it was told
    /// about (with `release`), and learns its assignment — being told, from then on, of what it
    /// is now losing.
    ///
    /// HTTP members release on every heartbeat (they commit before heartbeating again); a stream
    /// member releases when it acknowledges an assignment.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`].
    pub fn poll(&mut self, member: &str, now_ms: i64, release: bool) -> Result<MemberView, GroupError> {
        let m = self.members.get_mut(member).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        m.last_seen_ms = now_ms;
        if release {
            let released: Vec<TopicPartition> = self
                .assignment
                .get(member)
                .map(|tps| tps.iter().filter(|tp| self.notified.contains(*tp)).cloned().collect())
                .unwrap_or_default();
            if !released.is_empty() {
                if let Some(owned) = self.assignment.get_mut(member) {
                    owned.retain(|tp| !released.contains(tp));
                }
                for tp in &released {
                    self.notified.remove(tp);
                }
                let mut assignment = std::mem::take(&mut self.assignment);
                Self::hand_over_free(&mut assignment, &self.target);
                self.assignment = assignment;
                self.generation += 1;
                self.version += 1;
            }
        }
        let view = self.view(member);
        self.notified.extend(view.revoking.iter().cloned());
        Ok(view)
    }

    /// Keeps a member's session alive, nothing more.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`].
    pub fn touch(&mut self, member: &str, now_ms: i64) -> Result<(), GroupError> {
        let m = self.members.get_mut(member).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        m.last_seen_ms = now_ms;
        Ok(())
    }

    /// A new member joins (`member_id` = None) or an existing one re-joins.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`] when re-joining with an id the group does not know.
    pub fn join(
        &mut self,
        member_id: Option<&str>,
        topics: BTreeSet<String>,
        session_timeout_ms: u64,
        now_ms: i64,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<MemberView, GroupError> {
        let id = match member_id {
            Some(id) if self.members.contains_key(id) => id.to_string(),
            Some(id) => return Err(GroupError::UnknownMember(id.to_string())),
            None => {
                self.next_member += 1;
                format!("{}-{}", self.id, self.next_member)
            }
        };
        self.members.insert(id.clone(), Member { id: id.clone(), topics, session_timeout_ms, last_seen_ms: now_ms });
        self.version += 1;
        self.rebalance(partitions);
        Ok(self.view(&id))
    }

    /// [`Group::poll`] with release: what an HTTP member's heartbeat does.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`].
    pub fn heartbeat(&mut self, member: &str, now_ms: i64) -> Result<MemberView, GroupError> {
        self.poll(member, now_ms, true)
    }

    /// A member leaves; the others take over its partitions.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`].
    pub fn leave(&mut self, member: &str, partitions: &BTreeMap<String, u32>) -> Result<(), GroupError> {
        self.members.remove(member).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        self.assignment.remove(member);
        self.target.remove(member);
        self.version += 1;
        self.rebalance(partitions);
        Ok(())
    }

    /// Expels members silent for longer than their session timeout; returns who was expelled.
    pub fn expire(&mut self, now_ms: i64, partitions: &BTreeMap<String, u32>) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| now_ms.saturating_sub(m.last_seen_ms) > m.session_timeout_ms as i64)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
            self.assignment.remove(id);
            self.target.remove(id);
        }
        if !expired.is_empty() {
            self.version += 1;
            self.rebalance(partitions);
        }
        expired
    }

    /// A member's subscription changed (a pattern matched a new topic): rebalance.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`].
    pub fn set_topics(
        &mut self,
        member: &str,
        topics: BTreeSet<String>,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<(), GroupError> {
        let m = self.members.get_mut(member).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        if m.topics != topics {
            m.topics = topics;
            self.version += 1;
            self.rebalance(partitions);
        }
        Ok(())
    }

    /// Partition counts changed (or topics appeared): rebalance if the assignment moves.
    pub fn partitions_changed(&mut self, partitions: &BTreeMap<String, u32>) {
        if !self.members.is_empty() {
            self.rebalance(partitions);
        }
    }

    /// Fencing for fetches and commits: may `member`, speaking for `generation`, use `tp`?
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`], [`GroupError::StaleGeneration`] (eager assignors, or a
    /// partition that moved), [`GroupError::NotOwner`].
    pub fn check(&self, member: &str, generation: u64, tp: &TopicPartition) -> Result<(), GroupError> {
        if !self.members.contains_key(member) {
            return Err(GroupError::UnknownMember(member.to_string()));
        }
        let owns = self.assignment.get(member).is_some_and(|a| a.contains(tp));
        if generation > self.generation {
            return Err(GroupError::StaleGeneration { given: generation, current: self.generation });
        }
        if generation < self.generation {
            // Cooperative: a partition that did not move keeps flowing under the old generation.
            if self.strategy == Strategy::Sticky && owns {
                return Ok(());
            }
            return Err(GroupError::StaleGeneration { given: generation, current: self.generation });
        }
        if !owns {
            return Err(GroupError::NotOwner { topic: tp.0.clone(), partition: tp.1, generation });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn parts(spec: &[(&str, u32)]) -> BTreeMap<String, u32> {
        spec.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    /// No partition has two owners, and none is unowned while a subscriber is alive.
    fn check_invariant(g: &Group, partitions: &BTreeMap<String, u32>) {
        let mut owners: BTreeMap<&TopicPartition, &String> = BTreeMap::new();
        for (m, tps) in g.assignment() {
            for tp in tps {
                assert!(owners.insert(tp, m).is_none(), "{tp:?} has two owners in generation {}", g.generation());
            }
        }
        for m in g.members() {
            for t in &m.topics {
                for p in 0..partitions.get(t).copied().unwrap_or(0) {
                    assert!(owners.contains_key(&(t.clone(), p)), "{t}/{p} unowned while {} subscribes", m.id);
                }
            }
        }
    }

    #[test]
    fn joins_leaves_and_expiry_rebalance_with_new_generations() {
        let p = parts(&[("orders", 4)]);
        let mut g = Group::new("g", Strategy::Range);
        let a = g.join(None, topics(&["orders"]), 10_000, 0, &p).unwrap();
        assert_eq!((a.generation, a.assignment.len()), (1, 4));
        let b = g.join(None, topics(&["orders"]), 10_000, 100, &p).unwrap();
        assert_eq!(b.generation, 2);
        check_invariant(&g, &p);
        // A's generation 1 is now stale for everything (eager assignor).
        let tp = ("orders".to_string(), 0);
        assert!(matches!(g.check(&a.member_id, 1, &tp), Err(GroupError::StaleGeneration { given: 1, current: 2 })));
        let a2 = g.heartbeat(&a.member_id, 200).unwrap();
        assert_eq!(a2.assignment.len(), 2);
        assert!(g.check(&a.member_id, 2, &a2.assignment[0]).is_ok());
        assert!(matches!(g.check(&a.member_id, 2, &("orders".to_string(), 3)), Err(GroupError::NotOwner { .. })));
        // B goes silent: after its session timeout A owns everything again.
        assert_eq!(g.expire(10_050, &p), Vec::<String>::new());
        assert_eq!(g.expire(10_101, &p), vec![b.member_id.clone()]);
        assert_eq!(g.generation(), 3);
        assert_eq!(g.heartbeat(&a.member_id, 10_300).unwrap().assignment.len(), 4);
        assert!(matches!(g.heartbeat(&b.member_id, 10_300), Err(GroupError::UnknownMember(_))));
        check_invariant(&g, &p);
        g.leave(&a.member_id, &p).unwrap();
        assert!(g.is_empty());
    }

    #[test]
    fn partition_growth_reaches_members() {
        let mut p = parts(&[("t", 2)]);
        let mut g = Group::new("g", Strategy::RoundRobin);
        let a = g.join(None, topics(&["t"]), 10_000, 0, &p).unwrap();
        let b = g.join(None, topics(&["t"]), 10_000, 0, &p).unwrap();
        assert_eq!(b.generation, 2);
        p.insert("t".into(), 4);
        g.partitions_changed(&p);
        assert_eq!(g.generation(), 3);
        assert_eq!(g.heartbeat(&a.member_id, 1).unwrap().assignment.len(), 2);
        check_invariant(&g, &p);
        // Unchanged counts: no new generation.
        g.partitions_changed(&p);
        assert_eq!(g.generation(), 3);
    }

    #[test]
    fn sticky_keeps_unmoved_partitions_flowing_under_the_old_generation() {
        let p = parts(&[("t", 6)]);
        let mut g = Group::new("g", Strategy::Sticky);
        let a = g.join(None, topics(&["t"]), 10_000, 0, &p).unwrap();
        assert_eq!(a.assignment.len(), 6);
        let b = g.join(None, topics(&["t"]), 10_000, 0, &p).unwrap();
        check_invariant(&g, &p);
        // B gets nothing until A has handed over what moves.
        assert!(b.assignment.is_empty() && b.revoking.is_empty());
        assert!(g.is_rebalancing());
        // A learns which three partitions it is losing; it still owns them, so it may commit them.
        let told = g.poll(&a.member_id, 1, false).unwrap();
        assert_eq!((told.assignment.len(), told.revoking.len()), (3, 3));
        for tp in &a.assignment {
            assert!(g.check(&a.member_id, a.generation, tp).is_ok(), "{tp:?} is still A's");
        }
        // A polling without release (a stream member that has not acked yet) keeps them.
        assert_eq!(g.poll(&a.member_id, 2, false).unwrap().revoking.len(), 3);
        // A comes back: the revoked partitions go to B in a new generation.
        let a2 = g.heartbeat(&a.member_id, 3).unwrap();
        assert_eq!((a2.assignment, a2.revoking.len()), (told.assignment.clone(), 0));
        assert!(a2.generation > told.generation);
        assert!(!g.is_rebalancing());
        for tp in &a.assignment {
            let kept = told.assignment.contains(tp);
            let verdict = g.check(&a.member_id, a.generation, tp);
            assert_eq!(verdict.is_ok(), kept, "{tp:?}: kept partitions flow on, moved ones are fenced");
        }
        let b2 = g.heartbeat(&b.member_id, 4).unwrap();
        assert_eq!(b2.assignment, told.revoking);
        for tp in &b2.assignment {
            assert!(g.check(&b.member_id, b2.generation, tp).is_ok());
        }
        check_invariant(&g, &p);
    }

    #[test]
    fn a_silent_member_loses_revoked_partitions_at_its_session_timeout() {
        let p = parts(&[("t", 4)]);
        let mut g = Group::new("g", Strategy::Sticky);
        let a = g.join(None, topics(&["t"]), 1_000, 0, &p).unwrap();
        let b = g.join(None, topics(&["t"]), 10_000, 0, &p).unwrap();
        assert!(g.poll(&b.member_id, 500, true).unwrap().assignment.is_empty());
        assert_eq!(g.expire(1_001, &p), vec![a.member_id]);
        assert_eq!(g.heartbeat(&b.member_id, 1_002).unwrap().assignment.len(), 4);
    }

    #[test]
    fn snapshot_restores_the_same_group() {
        let p = parts(&[("t", 4)]);
        let mut g = Group::new("g", Strategy::Sticky);
        let a = g.join(None, topics(&["t"]), 1_000, 0, &p).unwrap();
        g.join(None, topics(&["t"]), 10_000, 0, &p).unwrap();
        let restored = Group::restore("g", &g.snapshot(), 50);
        assert_eq!(restored.snapshot(), g.snapshot());
        assert_eq!(restored.generation(), g.generation());
        // Sessions restart at restore time, and the next member id does not reuse an old one.
        let mut r = restored;
        assert!(r.expire(1_000, &p).is_empty());
        let c = r.join(None, topics(&["t"]), 1_000, 60, &p).unwrap();
        assert_ne!(c.member_id, a.member_id);
        assert_eq!(c.member_id, "g-3");
    }

    #[test]
    fn rejoining_with_an_unknown_id_is_refused() {
        let mut g = Group::new("g", Strategy::Range);
        assert!(matches!(
            g.join(Some("ghost"), topics(&["t"]), 1000, 0, &parts(&[("t", 1)])),
            Err(GroupError::UnknownMember(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        Join(u8),
        Heartbeat(u8),
        Leave(u8),
        Advance(u16),
        Grow(u8),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..3).prop_map(Step::Join),
            3 => any::<u8>().prop_map(Step::Heartbeat),
            1 => any::<u8>().prop_map(Step::Leave),
            2 => (0u16..3000).prop_map(Step::Advance),
            1 => (0u8..2).prop_map(Step::Grow),
        ]
    }

    proptest! {
        /// Any sequence of joins, heartbeats, leaves, time passing and partition growth keeps the
        /// invariants: within a generation no partition has two owners, no partition of a
        /// subscribed topic is unowned while a subscriber lives, only members own partitions,
        /// and generations only grow.
        #[test]
        fn coordinator_keeps_its_invariants(steps in proptest::collection::vec(step(), 1..60),
                                            strategy in prop_oneof![Just(Strategy::Range), Just(Strategy::RoundRobin), Just(Strategy::Sticky)]) {
            let topics = ["a", "b", "c"];
            let mut partitions: BTreeMap<String, u32> = topics.iter().map(|t| (t.to_string(), 3)).collect();
            let mut g = Group::new("g", strategy);
            let mut now = 0i64;
            let mut generation = 0;
            for step in steps {
                match step {
                    Step::Join(t) => {
                        let subs: BTreeSet<String> = topics[..=t as usize].iter().map(|s| s.to_string()).collect();
                        g.join(None, subs, 1000, now, &partitions).unwrap();
                    }
                    Step::Heartbeat(i) => {
                        let ids: Vec<String> = g.members().map(|m| m.id.clone()).collect();
                        if !ids.is_empty() {
                            g.heartbeat(&ids[i as usize % ids.len()], now).unwrap();
                        }
                    }
                    Step::Leave(i) => {
                        let ids: Vec<String> = g.members().map(|m| m.id.clone()).collect();
                        if !ids.is_empty() {
                            g.leave(&ids[i as usize % ids.len()], &partitions).unwrap();
                        }
                    }
                    Step::Advance(ms) => {
                        now += i64::from(ms);
                        g.expire(now, &partitions);
                    }
                    Step::Grow(t) => {
                        *partitions.get_mut(topics[t as usize]).unwrap() += 1;
                        g.partitions_changed(&partitions);
                    }
                }
                prop_assert!(g.generation() >= generation);
                generation = g.generation();
                let mut owners = BTreeSet::new();
                for (member, tps) in g.assignment() {
                    let m = g.members().find(|m| &m.id == member);
                    prop_assert!(m.is_some() || tps.is_empty(), "{member} owns partitions but is gone");
                    for tp in tps {
                        prop_assert!(owners.insert(tp.clone()), "{tp:?} has two owners");
                        prop_assert!(m.is_some_and(|m| m.topics.contains(&tp.0)), "{tp:?} owned without a subscription");
                        prop_assert_eq!(g.check(member, g.generation(), tp), Ok(()));
                    }
                }
                for m in g.members() {
                    for t in &m.topics {
                        for p in 0..partitions[t] {
                            prop_assert!(owners.contains(&(t.clone(), p)), "{t}/{p} unowned while {} subscribes", m.id);
                        }
                    }
                }
            }
            // Liveness: once every member has checked in twice, every revoked partition has moved.
            let ids: Vec<String> = g.members().map(|m| m.id.clone()).collect();
            for _ in 0..2 {
                for id in &ids {
                    g.heartbeat(id, now).unwrap();
                }
            }
            prop_assert!(!g.is_rebalancing(), "still rebalancing after every member checked in twice");
        }
    }
}
