//! The consumer-group service: drives the sans-IO [`Group`] coordinators, keeps each member's
//! delivery positions, and persists through the metadata Raft group both the groups (members,
//! generation, assignment: every change that alters them is written before it is answered) and
//! their committed offsets. After a restart the members are still there, each with a fresh
//! session; what they had been handed but not committed is read again from the committed offset.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::assignor::{Strategy, TopicPartition};
use super::coordinator::{Group, GroupError, GroupSnapshot, MemberView};
use crate::broker::{Broker, FetchedRecord, Start, now_ms};
use crate::error::{ApiError, ErrorCode};
use crate::metadata::{Command, CommandResult};

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reset {
    Earliest,
    Latest,
}

/// A group as the metadata Raft state machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub group: GroupSnapshot,
    pub reset: Reset,
    /// member → auto-commit interval (ms)
    pub auto_commit: BTreeMap<String, u64>,
    /// member → subscription entries, for members subscribed by pattern
    pub patterns: BTreeMap<String, Vec<String>>,
}

impl GroupState {
    pub fn version(&self) -> u64 {
        self.group.version
    }
}

#[derive(Debug)]
struct GroupEntry {
    group: Group,
    reset: Reset,
    /// Next offset to deliver, per member and partition (what the member has been given).
    positions: HashMap<(String, TopicPartition), u64>,
    /// Members with auto-commit: interval and time of the last auto-commit.
    auto_commit: HashMap<String, (u64, i64)>,
    /// Members whose subscription holds patterns, re-expanded as topics come and go.
    patterns: HashMap<String, Subscription>,
    /// Bumped whenever the membership or assignment changes (wakes the group's waiting members).
    changes: watch::Sender<u64>,
}

/// A subscription: topic names and regular expressions (any entry that is not a valid topic
/// name is a pattern, matched against whole names).
#[derive(Debug, Clone)]
pub struct Subscription {
    entries: Vec<String>,
    names: BTreeSet<String>,
    patterns: Vec<regex::Regex>,
}

impl Subscription {
    /// # Errors
    /// `invalid_request` for an entry that is neither a topic name nor a valid regex.
    pub fn parse(entries: &[String]) -> Result<Self, ApiError> {
        let mut names = BTreeSet::new();
        let mut patterns = Vec::new();
        for entry in entries {
            if crate::topic::validate_name(entry).is_ok() {
                names.insert(entry.clone());
            } else {
                let re = regex::Regex::new(&format!("^(?:{entry})$")).map_err(|e| {
                    ApiError::invalid(format!(
                        "subscription {entry:?} is neither a topic name nor a valid pattern: {e}"
                    ))
                })?;
                patterns.push(re);
            }
        }
        Ok(Self { entries: entries.to_vec(), names, patterns })
    }

    fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// The topics this subscription covers among `existing` (names are kept even if missing).
    fn expand(&self, existing: &BTreeMap<String, u32>) -> BTreeSet<String> {
        let mut topics = self.names.clone();
        topics.extend(
            existing.keys().filter(|t| !t.starts_with("__") && self.patterns.iter().any(|p| p.is_match(t))).cloned(),
        );
        topics
    }
}

/// All groups of this node.
#[derive(Debug)]
pub struct Groups {
    broker: Arc<Broker>,
    // A std mutex: coordinator steps are pure and quick; never held across `.await`.
    groups: Mutex<BTreeMap<String, GroupEntry>>,
    /// Since when each group (known here or only by its committed offsets) has had no members.
    empty_since: Mutex<HashMap<String, i64>>,
    /// How long an empty group's offsets are kept.
    offsets_retention_ms: i64,
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        let code = match e {
            GroupError::UnknownMember(_) => ErrorCode::UnknownMember,
            GroupError::StaleGeneration { .. } | GroupError::NotOwner { .. } => ErrorCode::StaleGeneration,
        };
        ApiError::new(code, e.to_string())
    }
}

/// Where a group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetStatus {
    pub topic: String,
    pub partition: u32,
    /// The next offset to process, if the group committed one.
    pub committed: Option<u64>,
    pub high_watermark: u64,
    /// Records between the committed offset (0 if none) and the high watermark.
    pub lag: u64,
}

/// A group as `GET /v1/groups/{group}` shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub strategy: Strategy,
    pub generation: u64,
    pub rebalancing: bool,
    pub members: Vec<(String, Vec<TopicPartition>)>,
    pub offsets: Vec<OffsetStatus>,
}

impl GroupDescription {
    /// `empty`, `rebalancing` (partitions are moving between members) or `stable`.
    pub fn state(&self) -> &'static str {
        match (self.members.is_empty(), self.rebalancing) {
            (true, _) => "empty",
            (false, true) => "rebalancing",
            (false, false) => "stable",
        }
    }
}

/// Most records a member fetch reads from one partition per round.
const PARTITION_FETCH_BYTES: usize = 1 << 20;

impl Groups {
    /// The groups persisted in the metadata, each member with a fresh session.
    pub fn new(broker: Arc<Broker>, offsets_retention: Duration) -> Self {
        let now = now_ms();
        let groups = broker
            .metadata()
            .group_states()
            .into_iter()
            .map(|(name, state)| {
                let patterns = state
                    .patterns
                    .iter()
                    .filter_map(|(m, entries)| Some((m.clone(), Subscription::parse(entries).ok()?)))
                    .collect();
                let entry = GroupEntry {
                    group: Group::restore(name.clone(), &state.group, now),
                    reset: state.reset,
                    positions: HashMap::new(),
                    auto_commit: state.auto_commit.iter().map(|(m, i)| (m.clone(), (*i, now))).collect(),
                    patterns,
                    changes: watch::Sender::new(0),
                };
                (name, entry)
            })
            .collect();
        Self {
            broker,
            groups: Mutex::new(groups),
            empty_since: Mutex::new(HashMap::new()),
            offsets_retention_ms: offsets_retention.as_millis().min(i64::MAX as u128) as i64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, GroupEntry>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.broker.metadata().topics().into_iter().map(|(name, t)| (name, t.partitions)).collect()
    }

    /// Changes whenever `group`'s membership or assignment does.
    ///
    /// # Errors
    /// `unknown_member` when the group is not known here.
    pub fn changes(&self, group: &str) -> Result<watch::Receiver<u64>, ApiError> {
        let groups = self.lock();
        let entry = groups.get(group).ok_or_else(|| GroupError::UnknownMember(format!("(any of group {group:?})")))?;
        Ok(entry.changes.subscribe())
    }

    /// Writes `group`'s current state through Raft if it changed since `before` (its version
    /// then). The state machine keeps the highest version, so concurrent writes may land in any
    /// order.
    async fn persist(&self, group: &str, before: Option<u64>) -> Result<(), ApiError> {
        let state = {
            let groups = self.lock();
            let Some(e) = groups.get(group) else { return Ok(()) };
            if before == Some(e.group.version()) {
                return Ok(());
            }
            e.changes.send_modify(|v| *v += 1);
            GroupState {
                group: e.group.snapshot(),
                reset: e.reset,
                auto_commit: e.auto_commit.iter().map(|(m, (interval, _))| (m.clone(), *interval)).collect(),
                patterns: e.patterns.iter().map(|(m, s)| (m.clone(), s.entries.clone())).collect(),
            }
        };
        self.broker.metadata().write(Command::SetGroup { group: group.to_string(), state: Box::new(state) }).await?;
        Ok(())
    }

    /// Joins `group` (creating it with `strategy` if new).
    ///
    /// # Errors
    /// `topic_not_found` for an unknown topic; `invalid_request` for a different assignor than
    /// the group uses; `unavailable` when the change cannot be persisted.
    pub async fn join(
        &self,
        group: &str,
        subscription: Subscription,
        strategy: Strategy,
        session_timeout_ms: u64,
        reset: Reset,
        auto_commit_interval_ms: Option<u64>,
    ) -> Result<MemberView, ApiError> {
        let counts = self.partition_counts();
        if let Some(missing) = subscription.names.iter().find(|t| !counts.contains_key(*t)) {
            return Err(ApiError::topic_not_found(missing));
        }
        let topics = subscription.expand(&counts);
        let view = {
            let mut groups = self.lock();
            let entry = groups.entry(group.to_string()).or_insert_with(|| GroupEntry {
                group: Group::new(group, strategy),
                reset,
                positions: HashMap::new(),
                auto_commit: HashMap::new(),
                patterns: HashMap::new(),
                changes: watch::Sender::new(0),
            });
            if entry.group.strategy != strategy && !entry.group.is_empty() {
                return Err(ApiError::invalid(format!(
                    "group {group:?} uses the {} assignor",
                    entry.group.strategy.name()
                )));
            }
            entry.group.strategy = strategy;
            entry.reset = reset;
            let view = entry.group.join(None, topics, session_timeout_ms, now_ms(), &counts)?;
            if let Some(interval) = auto_commit_interval_ms {
                entry.auto_commit.insert(view.member_id.clone(), (interval, now_ms()));
            }
            if subscription.has_patterns() {
                entry.patterns.insert(view.member_id.clone(), subscription);
            }
            view
        };
        self.persist(group, None).await?;
        Ok(view)
    }

    /// A member checks in (see [`Group::poll`]): keeps its session, hands over what it was told
    /// it loses (with `release`), and learns its assignment.
    ///
    /// # Errors
    /// `unknown_member`; `unavailable` when a hand-over cannot be persisted.
    pub async fn check_in(&self, group: &str, member: &str, release: bool) -> Result<MemberView, ApiError> {
        let (before, view) = {
            let mut groups = self.lock();
            let entry = groups.get_mut(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
            let before = entry.group.version();
            let view = entry.group.poll(member, now_ms(), release)?;
            // A partition the member no longer reads restarts from the committed offset if it
            // comes back.
            entry.positions.retain(|(m, tp), _| m != member || view.assignment.contains(tp));
            (before, view)
        };
        self.persist(group, Some(before)).await?;
        Ok(view)
    }

    /// An HTTP heartbeat: [`Groups::check_in`] with release.
    ///
    /// # Errors
    /// As [`Groups::check_in`].
    pub async fn heartbeat(&self, group: &str, member: &str) -> Result<MemberView, ApiError> {
        self.check_in(group, member, true).await
    }

    /// Keeps a member's session alive (an open stream does this).
    ///
    /// # Errors
    /// `unknown_member`.
    pub fn touch(&self, group: &str, member: &str) -> Result<(), ApiError> {
        let mut groups = self.lock();
        let entry = groups.get_mut(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        Ok(entry.group.touch(member, now_ms())?)
    }

    /// # Errors
    /// `unknown_member`; `unavailable` when the change cannot be persisted.
    pub async fn leave(&self, group: &str, member: &str) -> Result<(), ApiError> {
        let counts = self.partition_counts();
        {
            let mut groups = self.lock();
            let entry = groups.get_mut(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
            entry.group.leave(member, &counts)?;
            entry.positions.retain(|(m, _), _| m != member);
            entry.auto_commit.remove(member);
            entry.patterns.remove(member);
        }
        self.persist(group, None).await
    }

    /// Expels silent members and follows partition-count changes (run periodically), persisting
    /// what changed. Returns the groups that have been empty for longer than the offsets
    /// retention: their committed offsets are to be deleted.
    pub async fn tick(&self) -> Vec<String> {
        let counts = self.partition_counts();
        let now = now_ms();
        let mut changed = Vec::new();
        let mut expired = Vec::new();
        {
            let mut groups = self.lock();
            for (name, entry) in groups.iter_mut() {
                let before = entry.group.version();
                for gone in entry.group.expire(now, &counts) {
                    tracing::info!(group = %name, member = %gone, "session expired");
                    entry.positions.retain(|(m, _), _| *m != gone);
                    entry.auto_commit.remove(&gone);
                    entry.patterns.remove(&gone);
                }
                // New topics matching a pattern join the member's subscription.
                for (member, subscription) in &entry.patterns {
                    let _ = entry.group.set_topics(member, subscription.expand(&counts), &counts);
                }
                entry.group.partitions_changed(&counts);
                if entry.group.version() != before {
                    changed.push((name.clone(), before));
                }
            }
            let mut names: BTreeSet<String> = groups.keys().cloned().collect();
            names.extend(self.broker.metadata().groups_with_offsets());
            let mut empty_since = self.empty_since.lock().unwrap_or_else(PoisonError::into_inner);
            for name in names {
                if groups.get(&name).is_some_and(|e| !e.group.is_empty()) {
                    empty_since.remove(&name);
                    continue;
                }
                let since = *empty_since.entry(name.clone()).or_insert(now);
                if now - since >= self.offsets_retention_ms {
                    groups.remove(&name);
                    empty_since.remove(&name);
                    expired.push(name);
                }
            }
        }
        for (name, before) in changed {
            if let Err(e) = self.persist(&name, Some(before)).await {
                tracing::warn!(group = %name, error = %e, "cannot persist the group");
            }
        }
        expired
    }

    /// Records for an HTTP member from its partitions, each from its position (the committed
    /// offset, else the group's reset policy); records of one partition come contiguous and in
    /// order. Checks the member in first (with release), so it also serves as a heartbeat.
    /// Long-polls up to `wait`, woken by appends to the member's partitions and by rebalances.
    ///
    /// # Errors
    /// `unknown_member`, `stale_generation` when `generation` is given and stale.
    pub async fn fetch(
        &self,
        group: &str,
        member: &str,
        generation: Option<u64>,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<(String, FetchedRecord)>, ApiError> {
        self.auto_commit(group, member).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changes = self.changes(group)?;
            let view = self.heartbeat(group, member).await?;
            if let Some(g) = generation {
                let groups = self.lock();
                if let Some(e) = groups.get(group) {
                    for tp in &view.assignment {
                        e.group.check(member, g, tp)?;
                    }
                }
            }
            let out = self.read(group, member, &view.assignment, max_records, deadline, Some(changes)).await?;
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }

    /// Reads up to `max_records` from `assignment` for `member`, advancing its positions; when
    /// there is nothing, waits until an append to one of the partitions, a group change (if
    /// `changes` is given) or `deadline`, and returns what is there then (possibly nothing).
    ///
    /// Cancel-safe: positions move only when records are returned.
    ///
    /// # Errors
    /// `topic_not_found` and storage errors.
    pub async fn read(
        &self,
        group: &str,
        member: &str,
        assignment: &[TopicPartition],
        max_records: usize,
        deadline: tokio::time::Instant,
        mut changes: Option<watch::Receiver<u64>>,
    ) -> Result<Vec<(String, FetchedRecord)>, ApiError> {
        let mut waited = false;
        loop {
            let mut appends = Vec::with_capacity(assignment.len());
            for tp in assignment {
                appends.push(self.broker.watch_high_watermark(&tp.0, tp.1)?);
            }
            let committed = self.broker.metadata().committed_offsets(group);
            let mut out = Vec::new();
            let mut moved = Vec::new();
            for tp in assignment {
                if out.len() >= max_records {
                    break;
                }
                let (topic, partition) = tp;
                let key = (member.to_string(), tp.clone());
                let (position, reset) = {
                    let groups = self.lock();
                    let e = groups.get(group);
                    (e.and_then(|e| e.positions.get(&key).copied()), e.map_or(Reset::Earliest, |e| e.reset))
                };
                let start = match (position, committed.get(topic).and_then(|p| p.get(partition))) {
                    (Some(p), _) => Start::Offset(p),
                    (None, Some(&c)) => Start::Offset(c),
                    (None, None) if reset == Reset::Latest => Start::Latest,
                    (None, None) => Start::Earliest,
                };
                let left = max_records - out.len();
                let result = match self
                    .broker
                    .fetch(topic, *partition, start, left, PARTITION_FETCH_BYTES, Duration::ZERO)
                    .await
                {
                    Ok(r) => r,
                    // Retention moved past the position: start over from the earliest record.
                    Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                        self.broker
                            .fetch(topic, *partition, Start::Earliest, left, PARTITION_FETCH_BYTES, Duration::ZERO)
                            .await?
                    }
                    Err(e) => return Err(e),
                };
                if position.is_none() || !result.records.is_empty() {
                    moved.push((key, result.next_offset));
                }
                out.extend(result.records.into_iter().map(|r| (topic.clone(), r)));
            }
            if !out.is_empty() || waited || tokio::time::Instant::now() >= deadline {
                // Positions move only now, after the last await, so a cancelled read loses nothing.
                if let Some(entry) = self.lock().get_mut(group) {
                    for (key, next) in moved {
                        entry.positions.insert(key, next);
                    }
                }
                return Ok(out);
            }
            // Nothing to read. Pin where partitions without a position start (so `latest` does
            // not move on while we wait), then sleep until an append (the receivers were taken
            // before reading, so none is missed), a rebalance or the deadline.
            if let Some(entry) = self.lock().get_mut(group) {
                entry.positions.extend(moved);
            }
            let mut wakeups: Vec<futures::future::BoxFuture<'_, ()>> = appends
                .iter_mut()
                .map(|rx| {
                    async move {
                        let _ = rx.changed().await;
                    }
                    .boxed()
                })
                .collect();
            if let Some(changes) = changes.as_mut() {
                wakeups.push(
                    async move {
                        let _ = changes.changed().await;
                    }
                    .boxed(),
                );
            }
            if wakeups.is_empty() {
                tokio::time::sleep_until(deadline).await;
            } else {
                let _ = tokio::time::timeout_at(deadline, futures::future::select_all(wakeups)).await;
            }
            waited = true;
        }
    }

    /// Auto-commit (at-least-once): when the member's interval has passed, commits the positions
    /// of everything delivered *before* the fetch now starting, for the partitions it owns.
    async fn auto_commit(&self, group: &str, member: &str) -> Result<(), ApiError> {
        let due = {
            let mut groups = self.lock();
            let Some(entry) = groups.get_mut(group) else { return Ok(()) };
            let now = now_ms();
            match entry.auto_commit.get_mut(member) {
                Some((interval, last)) if now - *last >= *interval as i64 => {
                    *last = now;
                    let owned = entry.group.assignment().get(member).cloned().unwrap_or_default();
                    let offsets: Vec<(String, u32, u64)> = owned
                        .into_iter()
                        .filter_map(|tp| {
                            entry.positions.get(&(member.to_string(), tp.clone())).map(|&o| (tp.0, tp.1, o))
                        })
                        .collect();
                    Some((entry.group.generation(), offsets))
                }
                _ => None,
            }
        };
        match due {
            Some((generation, offsets)) if !offsets.is_empty() => self.commit(group, member, generation, offsets).await,
            _ => Ok(()),
        }
    }

    /// Sets where `member` continues reading `tp` (resuming a push stream after `Last-Event-ID`).
    ///
    /// # Errors
    /// `unknown_member`; `stale_generation` when the member does not own `tp`.
    pub fn seek(&self, group: &str, member: &str, tp: TopicPartition, offset: u64) -> Result<(), ApiError> {
        let mut groups = self.lock();
        let entry = groups.get_mut(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        entry.group.check(member, entry.group.generation(), &tp)?;
        entry.positions.insert((member.to_string(), tp), offset);
        Ok(())
    }

    /// Deletes a group that has no members, with its committed offsets.
    ///
    /// # Errors
    /// `group_not_empty` while members remain.
    pub async fn delete(&self, group: &str) -> Result<(), ApiError> {
        {
            let mut groups = self.lock();
            if groups.get(group).is_some_and(|e| !e.group.is_empty()) {
                return Err(ApiError::new(ErrorCode::GroupNotEmpty, format!("group {group:?} still has members")));
            }
            groups.remove(group);
        }
        self.broker.metadata().write(Command::DeleteGroupOffsets { group: group.to_string() }).await?;
        Ok(())
    }

    /// Moves a group's committed offsets for `topic`: every partition while the group has no
    /// members, or — given `member` and its generation — the partitions of `topic` that member
    /// owns, whose reading then continues from there.
    ///
    /// # Errors
    /// `group_not_empty` (members remain and none is given), `unknown_member`,
    /// `stale_generation`, `topic_not_found`.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: Start,
        member: Option<(&str, u64)>,
    ) -> Result<Vec<(u32, u64)>, ApiError> {
        let meta = self.broker.metadata().topic(topic).ok_or_else(|| ApiError::topic_not_found(topic))?;
        let partitions: Vec<u32> = match member {
            None => {
                if self.lock().get(group).is_some_and(|e| !e.group.is_empty()) {
                    return Err(ApiError::new(
                        ErrorCode::GroupNotEmpty,
                        format!(
                            "group {group:?} has members: stop them first, or reset as a member (member_id, generation) for its own partitions"
                        ),
                    ));
                }
                (0..meta.partitions).collect()
            }
            Some((member, generation)) => {
                let groups = self.lock();
                let entry = groups.get(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
                let owned: Vec<u32> = entry
                    .group
                    .assignment()
                    .get(member)
                    .map(|tps| tps.iter().filter(|(t, _)| t == topic).map(|(_, p)| *p).collect())
                    .unwrap_or_default();
                for p in &owned {
                    entry.group.check(member, generation, &(topic.to_string(), *p))?;
                }
                if owned.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::StaleGeneration,
                        format!("member {member:?} owns no partition of {topic:?} in generation {generation}"),
                    ));
                }
                owned
            }
        };
        let mut offsets = Vec::new();
        for p in partitions {
            let r = self.broker.fetch(topic, p, to, 1, 1 << 16, Duration::ZERO).await;
            let offset = match (to, r) {
                (Start::Offset(o), _) => o,
                (_, Ok(r)) => r.records.first().map_or(r.next_offset, |rec| rec.offset),
                (_, Err(e)) => return Err(e),
            };
            offsets.push((topic.to_string(), p, offset));
        }
        let result: Vec<(u32, u64)> = offsets.iter().map(|(_, p, o)| (*p, *o)).collect();
        match self.broker.metadata().write(Command::CommitOffsets { group: group.to_string(), offsets }).await? {
            CommandResult::Ok => {}
            _ => return Err(ApiError::topic_not_found(topic)),
        }
        if let (Some((member, _)), Some(entry)) = (member, self.lock().get_mut(group)) {
            for (p, o) in &result {
                entry.positions.insert((member.to_string(), (topic.to_string(), *p)), *o);
            }
        }
        Ok(result)
    }

    /// Commits offsets after checking the member owns each partition in `generation`.
    ///
    /// # Errors
    /// `unknown_member`, `stale_generation`, `topic_not_found`, `unavailable`.
    pub async fn commit(
        &self,
        group: &str,
        member: &str,
        generation: u64,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), ApiError> {
        let counts = self.partition_counts();
        for (topic, partition, offset) in &offsets {
            let partitions = counts.get(topic).copied().ok_or_else(|| ApiError::topic_not_found(topic))?;
            let hw = self.broker.partition_status(topic, partitions).get(*partition as usize).map(|s| s.high_watermark);
            match hw {
                None => {
                    return Err(ApiError::new(
                        ErrorCode::PartitionNotFound,
                        format!("topic {topic:?} has no partition {partition}"),
                    ));
                }
                Some(hw) if *offset > hw => {
                    return Err(ApiError::new(
                        ErrorCode::OffsetOutOfRange,
                        format!("cannot commit offset {offset} for {topic}/{partition}: the high watermark is {hw}"),
                    ));
                }
                Some(_) => {}
            }
        }
        {
            let groups = self.lock();
            let entry = groups.get(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
            for (topic, partition, _) in &offsets {
                entry.group.check(member, generation, &(topic.clone(), *partition))?;
            }
        }
        match self.broker.metadata().write(Command::CommitOffsets { group: group.to_string(), offsets }).await? {
            CommandResult::Ok => Ok(()),
            _ => {
                Err(ApiError::new(ErrorCode::TopicNotFound, "an offset names a topic or partition that does not exist"))
            }
        }
    }

    /// # Errors
    /// `not_found` for an unknown group with no committed offsets.
    pub fn describe(&self, group: &str) -> Result<GroupDescription, ApiError> {
        let committed = self.broker.metadata().committed_offsets(group);
        let groups = self.lock();
        let entry = groups.get(group);
        if entry.is_none() && committed.is_empty() {
            return Err(ApiError::new(ErrorCode::NotFound, format!("group {group:?} does not exist")));
        }
        let mut tps: BTreeSet<TopicPartition> =
            committed.iter().flat_map(|(t, ps)| ps.keys().map(move |p| (t.clone(), *p))).collect();
        if let Some(e) = entry {
            tps.extend(e.group.assignment().values().flatten().cloned());
        }
        let counts = self.partition_counts();
        let offsets = tps
            .into_iter()
            .map(|(t, p)| {
                let hw = self
                    .broker
                    .partition_status(&t, counts.get(&t).copied().unwrap_or(0))
                    .get(p as usize)
                    .map_or(0, |s| s.high_watermark);
                let c = committed.get(&t).and_then(|ps| ps.get(&p)).copied();
                OffsetStatus {
                    lag: hw.saturating_sub(c.unwrap_or(0)),
                    topic: t,
                    partition: p,
                    committed: c,
                    high_watermark: hw,
                }
            })
            .collect();
        Ok(GroupDescription {
            strategy: entry.map_or(Strategy::Sticky, |e| e.group.strategy),
            generation: entry.map_or(0, |e| e.group.generation()),
            rebalancing: entry.is_some_and(|e| e.group.is_rebalancing()),
            members: entry
                .map(|e| e.group.assignment().iter().map(|(m, a)| (m.clone(), a.clone())).collect())
                .unwrap_or_default(),
            offsets,
        })
    }

    pub fn list(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}
