//! The consumer-group service: drives the sans-IO [`Group`] coordinators, keeps each member's
//! delivery positions, and commits offsets through the metadata Raft group.
//!
//! Membership lives in memory on this node (a restart makes members join again); committed
//! offsets are in the Raft state machine and survive restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::assignor::{Strategy, TopicPartition};
use super::coordinator::{Group, GroupError, MemberView};
use crate::broker::{Broker, FetchedRecord, Start, now_ms};
use crate::error::{ApiError, ErrorCode};
use crate::metadata::{Command, CommandResult};

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    Earliest,
    Latest,
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
}

/// A subscription: topic names and regular expressions (any entry that is not a valid topic
/// name is a pattern, matched against whole names).
#[derive(Debug, Clone)]
pub struct Subscription {
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
        Ok(Self { names, patterns })
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
    pub members: Vec<(String, Vec<TopicPartition>)>,
    pub offsets: Vec<OffsetStatus>,
}

impl Groups {
    pub fn new(broker: Arc<Broker>, offsets_retention: Duration) -> Self {
        Self {
            broker,
            groups: Mutex::new(BTreeMap::new()),
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

    /// Joins `group` (creating it with `strategy` if new).
    ///
    /// # Errors
    /// `topic_not_found` for an unknown topic; `invalid_request` for a different assignor than
    /// the group uses.
    pub fn join(
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
        let mut groups = self.lock();
        let entry = groups.entry(group.to_string()).or_insert_with(|| GroupEntry {
            group: Group::new(group, strategy),
            reset,
            positions: HashMap::new(),
            auto_commit: HashMap::new(),
            patterns: HashMap::new(),
        });
        if entry.group.strategy != strategy && !entry.group.is_empty() {
            return Err(ApiError::invalid(format!("group {group:?} uses the {:?} assignor", entry.group.strategy)));
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
        Ok(view)
    }

    /// # Errors
    /// `unknown_member`.
    pub fn heartbeat(&self, group: &str, member: &str) -> Result<MemberView, ApiError> {
        let mut groups = self.lock();
        let entry = groups.get_mut(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        Ok(entry.group.heartbeat(member, now_ms())?)
    }

    /// # Errors
    /// `unknown_member`.
    pub fn leave(&self, group: &str, member: &str) -> Result<(), ApiError> {
        let counts = self.partition_counts();
        let mut groups = self.lock();
        let entry = groups.get_mut(group).ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        entry.group.leave(member, &counts)?;
        entry.positions.retain(|(m, _), _| m != member);
        entry.auto_commit.remove(member);
        entry.patterns.remove(member);
        Ok(())
    }

    /// Expels silent members and follows partition-count changes (run periodically). Returns
    /// the groups that have been empty for longer than the offsets retention: their committed
    /// offsets are to be deleted.
    pub fn tick(&self) -> Vec<String> {
        let counts = self.partition_counts();
        let now = now_ms();
        let mut groups = self.lock();
        for (name, entry) in groups.iter_mut() {
            for expired in entry.group.expire(now, &counts) {
                tracing::info!(group = %name, member = %expired, "session expired");
                entry.positions.retain(|(m, _), _| *m != expired);
                entry.auto_commit.remove(&expired);
                entry.patterns.remove(&expired);
            }
            // New topics matching a pattern join the member's subscription.
            for (member, subscription) in &entry.patterns {
                let _ = entry.group.set_topics(member, subscription.expand(&counts), &counts);
            }
            entry.group.partitions_changed(&counts);
        }
        let mut names: BTreeSet<String> = groups.keys().cloned().collect();
        names.extend(self.broker.metadata().groups_with_offsets());
        let mut empty_since = self.empty_since.lock().unwrap_or_else(PoisonError::into_inner);
        let mut expired = Vec::new();
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
        expired
    }

    /// Records for `member` from its partitions, each from its position (the committed offset,
    /// else the group's reset policy); records of one partition come contiguous and in order.
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
            let view = self.heartbeat(group, member)?;
            if let Some(g) = generation {
                for tp in &view.assignment {
                    self.lock().get(group).map(|e| e.group.check(member, g, tp)).transpose()?;
                }
            }
            // A partition the member lost restarts from the committed offset if it comes back.
            if let Some(entry) = self.lock().get_mut(group) {
                entry.positions.retain(|(m, tp), _| m != member || view.assignment.contains(tp));
            }
            let committed = self.broker.metadata().committed_offsets(group);
            let mut out = Vec::new();
            for (topic, partition) in &view.assignment {
                if out.len() >= max_records {
                    break;
                }
                let key = (member.to_string(), (topic.clone(), *partition));
                let position = self.lock().get(group).and_then(|e| e.positions.get(&key).copied());
                let start = match (position, committed.get(topic).and_then(|p| p.get(partition))) {
                    (Some(p), _) => Start::Offset(p),
                    (None, Some(&c)) => Start::Offset(c),
                    (None, None) => match self.lock().get(group).map(|e| e.reset) {
                        Some(Reset::Latest) => Start::Latest,
                        _ => Start::Earliest,
                    },
                };
                let result = match self
                    .broker
                    .fetch(topic, *partition, start, max_records - out.len(), 1 << 20, Duration::ZERO)
                    .await
                {
                    Ok(r) => r,
                    // Retention moved past the position: start over from the earliest record.
                    Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                        self.broker
                            .fetch(topic, *partition, Start::Earliest, max_records - out.len(), 1 << 20, Duration::ZERO)
                            .await?
                    }
                    Err(e) => return Err(e),
                };
                if let Some(entry) = self.lock().get_mut(group) {
                    entry.positions.insert(key, result.next_offset);
                }
                out.extend(result.records.into_iter().map(|r| (topic.clone(), r)));
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(20).min(deadline - tokio::time::Instant::now())).await;
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

    /// Moves a group's committed offsets for every partition of `topic` (only while the group has
    /// no members, so no consumer is reading them).
    ///
    /// # Errors
    /// `group_not_empty`, `topic_not_found`.
    pub async fn reset_offsets(&self, group: &str, topic: &str, to: Start) -> Result<Vec<(u32, u64)>, ApiError> {
        if self.lock().get(group).is_some_and(|e| !e.group.is_empty()) {
            return Err(ApiError::new(
                ErrorCode::GroupNotEmpty,
                format!("stop the members of {group:?} before resetting its offsets"),
            ));
        }
        let meta = self.broker.metadata().topic(topic).ok_or_else(|| ApiError::topic_not_found(topic))?;
        let mut offsets = Vec::new();
        for p in 0..meta.partitions {
            let r = self.broker.fetch(topic, p, to, 1, 1 << 16, Duration::ZERO).await;
            let offset = match (to, r) {
                (Start::Offset(o), _) => o,
                (_, Ok(r)) => r.records.first().map_or(r.next_offset, |rec| rec.offset),
                (_, Err(e)) => return Err(e),
            };
            offsets.push((topic.to_string(), p, offset));
        }
        let result = offsets.iter().map(|(_, p, o)| (*p, *o)).collect();
        match self.broker.metadata().write(Command::CommitOffsets { group: group.to_string(), offsets }).await? {
            CommandResult::Ok => Ok(result),
            _ => Err(ApiError::topic_not_found(topic)),
        }
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
