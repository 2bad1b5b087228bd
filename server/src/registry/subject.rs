//! The registry's replicated state — subjects, their versions, global schema ids and
//! compatibility configs — and the commands that change it. Applied by the metadata state
//! machine on every node alike (sans-IO, deterministic): ids are assigned here, so every node
//! agrees on them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::compat::Compatibility;

/// A schema as stored under its global id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSchema {
    /// The normalized schema text (see `AvroSchema::normalized`).
    pub schema: String,
}

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: u32,
    /// Soft-deleted: hidden from reads unless asked for, still blocks its version number.
    #[serde(default)]
    pub deleted: bool,
}

/// A subject: its versions by number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub versions: BTreeMap<u32, Version>,
}

impl Subject {
    /// Versions not soft-deleted, oldest first.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Version)> {
        self.versions.iter().filter(|(_, v)| !v.deleted).map(|(n, v)| (*n, v))
    }

    pub fn latest_live(&self) -> Option<(u32, &Version)> {
        self.live().last()
    }
}

/// Everything the registry stores (a field of the metadata snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    #[serde(default)]
    pub schemas: BTreeMap<u32, StoredSchema>,
    #[serde(default)]
    pub subjects: BTreeMap<String, Subject>,
    /// The last id assigned (ids start at 1 and are never reused).
    #[serde(default)]
    pub last_id: u32,
    /// The global compatibility mode; `None` is the default, `BACKWARD`.
    #[serde(default)]
    pub compatibility: Option<Compatibility>,
    #[serde(default)]
    pub subject_compatibility: BTreeMap<String, Compatibility>,
}

/// A change to the registry, replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Add `schema` (already parsed, normalized and checked for compatibility) to `subject`,
    /// unless it is there already. `expected_latest` is the latest live version the check ran
    /// against: if another registration got in first, the command is refused (`Conflict`) and the
    /// caller checks again.
    Register { subject: String, schema: String, expected_latest: Option<u32> },
    /// Soft-delete every version of a subject, or (`permanent`) forget a soft-deleted subject.
    DeleteSubject { subject: String, permanent: bool },
    /// Soft-delete one version, or (`permanent`) forget a soft-deleted one.
    DeleteVersion { subject: String, version: u32, permanent: bool },
    /// Set (or with `None` remove) the global (`subject: None`) or a subject's mode.
    SetCompatibility { subject: Option<String>, compatibility: Option<Compatibility> },
}

impl RegistryCommand {
    /// The subject the command is about (empty for the global config).
    pub fn subject(&self) -> &str {
        match self {
            RegistryCommand::Register { subject, .. }
            | RegistryCommand::DeleteSubject { subject, .. }
            | RegistryCommand::DeleteVersion { subject, .. } => subject,
            RegistryCommand::SetCompatibility { subject, .. } => subject.as_deref().unwrap_or(""),
        }
    }
}

impl fmt::Display for RegistryCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryCommand::Register { subject, .. } => write!(f, "register a schema under subject {subject}"),
            RegistryCommand::DeleteSubject { subject, permanent } => {
                write!(f, "delete subject {subject}{}", if *permanent { " permanently" } else { "" })
            }
            RegistryCommand::DeleteVersion { subject, version, permanent } => {
                write!(
                    f,
                    "delete version {version} of subject {subject}{}",
                    if *permanent { " permanently" } else { "" }
                )
            }
            RegistryCommand::SetCompatibility { subject, compatibility } => {
                let mode = compatibility.map_or("default", Compatibility::as_str);
                write!(f, "set compatibility of {} to {mode}", subject.as_deref().unwrap_or("the registry"))
            }
        }
    }
}

/// What applying a registry command decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryOutcome {
    Registered {
        id: u32,
        version: u32,
    },
    /// The versions deleted.
    Deleted {
        versions: Vec<u32>,
    },
    /// The config before the change.
    ConfigSet {
        previous: Option<Compatibility>,
    },
    /// Another version was registered since the compatibility check: check again.
    Conflict,
    SubjectNotFound,
    /// Every version of the subject is soft-deleted already.
    SubjectSoftDeleted,
    /// A permanent delete of a subject that was not soft-deleted first.
    SubjectNotSoftDeleted,
    VersionNotFound,
    VersionSoftDeleted,
    /// A permanent delete of a version that was not soft-deleted first.
    VersionNotSoftDeleted,
}

impl RegistryState {
    /// Applies a command (deterministic: every node decides the same).
    pub fn apply(&mut self, command: RegistryCommand) -> RegistryOutcome {
        match command {
            RegistryCommand::Register { subject, schema, expected_latest } => {
                let existing = self.subjects.get(&subject);
                if let Some(s) = existing
                    && let Some((version, v)) =
                        s.live().find(|(_, v)| self.schemas.get(&v.id).is_some_and(|x| x.schema == schema))
                {
                    return RegistryOutcome::Registered { id: v.id, version };
                }
                if existing.and_then(Subject::latest_live).map(|(n, _)| n) != expected_latest {
                    return RegistryOutcome::Conflict;
                }
                let id = match self.schemas.iter().find(|(_, s)| s.schema == schema) {
                    Some((id, _)) => *id,
                    None => {
                        self.last_id += 1;
                        self.schemas.insert(self.last_id, StoredSchema { schema });
                        self.last_id
                    }
                };
                let s = self.subjects.entry(subject).or_default();
                let version = s.versions.keys().next_back().map_or(1, |n| n + 1);
                s.versions.insert(version, Version { id, deleted: false });
                RegistryOutcome::Registered { id, version }
            }
            RegistryCommand::DeleteSubject { subject, permanent } => {
                let Some(s) = self.subjects.get_mut(&subject) else { return RegistryOutcome::SubjectNotFound };
                if permanent {
                    if s.live().next().is_some() {
                        return RegistryOutcome::SubjectNotSoftDeleted;
                    }
                    let versions = s.versions.keys().copied().collect();
                    self.subjects.remove(&subject);
                    self.subject_compatibility.remove(&subject);
                    self.forget_unreferenced();
                    RegistryOutcome::Deleted { versions }
                } else {
                    let versions: Vec<u32> = s.live().map(|(n, _)| n).collect();
                    if versions.is_empty() {
                        return RegistryOutcome::SubjectSoftDeleted;
                    }
                    for v in s.versions.values_mut() {
                        v.deleted = true;
                    }
                    RegistryOutcome::Deleted { versions }
                }
            }
            RegistryCommand::DeleteVersion { subject, version, permanent } => {
                let Some(s) = self.subjects.get_mut(&subject) else { return RegistryOutcome::SubjectNotFound };
                let Some(v) = s.versions.get_mut(&version) else { return RegistryOutcome::VersionNotFound };
                match (permanent, v.deleted) {
                    (false, true) => RegistryOutcome::VersionSoftDeleted,
                    (false, false) => {
                        v.deleted = true;
                        RegistryOutcome::Deleted { versions: vec![version] }
                    }
                    (true, false) => RegistryOutcome::VersionNotSoftDeleted,
                    (true, true) => {
                        s.versions.remove(&version);
                        if s.versions.is_empty() {
                            self.subjects.remove(&subject);
                        }
                        self.forget_unreferenced();
                        RegistryOutcome::Deleted { versions: vec![version] }
                    }
                }
            }
            RegistryCommand::SetCompatibility { subject: None, compatibility } => {
                let previous = std::mem::replace(&mut self.compatibility, compatibility);
                RegistryOutcome::ConfigSet { previous }
            }
            RegistryCommand::SetCompatibility { subject: Some(subject), compatibility } => {
                let previous = match compatibility {
                    Some(c) => self.subject_compatibility.insert(subject, c),
                    None => self.subject_compatibility.remove(&subject),
                };
                RegistryOutcome::ConfigSet { previous }
            }
        }
    }

    /// Drops schemas no version refers to any more (after a permanent delete). Their ids are
    /// never handed out again.
    fn forget_unreferenced(&mut self) {
        let used: std::collections::BTreeSet<u32> =
            self.subjects.values().flat_map(|s| s.versions.values().map(|v| v.id)).collect();
        self.schemas.retain(|id, _| used.contains(id));
    }

    /// The mode that applies to `subject`.
    pub fn compatibility_of(&self, subject: &str) -> Compatibility {
        self.subject_compatibility.get(subject).copied().unwrap_or_else(|| self.global_compatibility())
    }

    pub fn global_compatibility(&self) -> Compatibility {
        self.compatibility.unwrap_or(Compatibility::Backward)
    }

    /// The subjects and versions (soft-deleted ones too) that use schema `id`.
    pub fn uses_of(&self, id: u32) -> Vec<(String, u32, bool)> {
        self.subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions.iter().filter(|(_, v)| v.id == id).map(move |(n, v)| (name.clone(), *n, v.deleted))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(st: &mut RegistryState, subject: &str, schema: &str) -> RegistryOutcome {
        let expected_latest = st.subjects.get(subject).and_then(Subject::latest_live).map(|(n, _)| n);
        st.apply(RegistryCommand::Register { subject: subject.into(), schema: schema.into(), expected_latest })
    }

    #[test]
    fn ids_are_global_versions_per_subject_and_deletes_are_two_step() {
        let mut st = RegistryState::default();
        assert_eq!(register(&mut st, "a", "S1"), RegistryOutcome::Registered { id: 1, version: 1 });
        assert_eq!(register(&mut st, "a", "S1"), RegistryOutcome::Registered { id: 1, version: 1 }, "idempotent");
        assert_eq!(register(&mut st, "b", "S1"), RegistryOutcome::Registered { id: 1, version: 1 }, "same id");
        assert_eq!(register(&mut st, "a", "S2"), RegistryOutcome::Registered { id: 2, version: 2 });
        let stale = RegistryCommand::Register { subject: "a".into(), schema: "S3".into(), expected_latest: Some(1) };
        assert_eq!(st.apply(stale), RegistryOutcome::Conflict);

        let del = |version, permanent| RegistryCommand::DeleteVersion { subject: "a".into(), version, permanent };
        assert_eq!(st.apply(del(2, true)), RegistryOutcome::VersionNotSoftDeleted);
        assert_eq!(st.apply(del(2, false)), RegistryOutcome::Deleted { versions: vec![2] });
        assert_eq!(st.apply(del(2, false)), RegistryOutcome::VersionSoftDeleted);
        assert_eq!(st.apply(del(9, false)), RegistryOutcome::VersionNotFound);
        // A soft-deleted version keeps its number: the next one is 3.
        assert_eq!(register(&mut st, "a", "S3"), RegistryOutcome::Registered { id: 3, version: 3 });
        assert_eq!(st.apply(del(2, true)), RegistryOutcome::Deleted { versions: vec![2] });
        assert!(!st.schemas.contains_key(&2), "no version uses id 2 any more");

        let sub = |permanent| RegistryCommand::DeleteSubject { subject: "a".into(), permanent };
        assert_eq!(st.apply(sub(true)), RegistryOutcome::SubjectNotSoftDeleted);
        assert_eq!(st.apply(sub(false)), RegistryOutcome::Deleted { versions: vec![1, 3] });
        assert_eq!(st.apply(sub(false)), RegistryOutcome::SubjectSoftDeleted);
        assert_eq!(st.apply(sub(true)), RegistryOutcome::Deleted { versions: vec![1, 3] });
        assert!(st.schemas.contains_key(&1), "subject b still uses id 1");
        assert!(!st.schemas.contains_key(&3));
        assert_eq!(register(&mut st, "a", "S4"), RegistryOutcome::Registered { id: 4, version: 1 }, "ids never reused");

        assert_eq!(st.compatibility_of("a"), Compatibility::Backward);
        let set = |subject: Option<&str>, c| RegistryCommand::SetCompatibility {
            subject: subject.map(str::to_string),
            compatibility: c,
        };
        st.apply(set(None, Some(Compatibility::Full)));
        st.apply(set(Some("a"), Some(Compatibility::None)));
        assert_eq!((st.compatibility_of("a"), st.compatibility_of("b")), (Compatibility::None, Compatibility::Full));
        assert_eq!(st.apply(set(Some("a"), None)), RegistryOutcome::ConfigSet { previous: Some(Compatibility::None) });
        assert_eq!(st.compatibility_of("a"), Compatibility::Full);
    }
}
