//! Topic administration: validates a request, commits it through the metadata Raft group, then
//! waits until this node's logs follow (so a produce right after `create` finds its partitions).

use std::sync::Arc;

use crate::broker::{Broker, now_ms};
use crate::error::{ApiError, ErrorCode};
use crate::metadata::{Command, CommandResult};
use crate::topic::{self, TopicConfig};

/// Create, alter, grow and delete topics.
#[derive(Debug, Clone)]
pub struct Admin {
    broker: Arc<Broker>,
}

impl Admin {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    async fn commit(&self, command: Command) -> Result<(), ApiError> {
        let name = command.subject().to_string();
        let result = self.broker.metadata().write(command).await?;
        match result {
            CommandResult::Ok => {}
            CommandResult::TopicExists => {
                return Err(ApiError::new(ErrorCode::TopicAlreadyExists, format!("topic {name:?} already exists")));
            }
            CommandResult::TopicNotFound => return Err(ApiError::topic_not_found(&name)),
            CommandResult::Noop
            | CommandResult::TierGap { .. }
            | CommandResult::Registry(_)
            | CommandResult::ProducerId(_)
            | CommandResult::ProducerIdsExhausted => {
                return Err(ApiError::new(ErrorCode::Internal, format!("unexpected metadata result {result}")));
            }
            CommandResult::PartitionsNotIncreased { current } => {
                return Err(ApiError::new(
                    ErrorCode::InvalidTopic,
                    format!("topic {name:?} has {current} partitions; the new count must be larger"),
                ));
            }
        }
        let broker = Arc::clone(&self.broker);
        tokio::task::spawn_blocking(move || broker.reconcile()).await??;
        Ok(())
    }

    /// # Errors
    /// `invalid_topic`, `invalid_config`, `topic_already_exists`, `unavailable`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        config: TopicConfig,
    ) -> Result<(), ApiError> {
        topic::validate_name(name)?;
        if name.starts_with("__") {
            return Err(ApiError::new(
                ErrorCode::InvalidTopic,
                "names starting with `__` are reserved for internal topics",
            ));
        }
        topic::validate_partitions(partitions)?;
        if let Some(rf) = replication_factor.filter(|&rf| rf > 1) {
            return Err(ApiError::new(
                ErrorCode::InvalidConfig,
                format!("replication_factor {rf} needs {rf} nodes; this cluster has 1"),
            ));
        }
        self.commit(Command::CreateTopic { name: name.to_string(), partitions, config, created_ms: now_ms() }).await
    }

    /// # Errors
    /// `topic_not_found`, `unavailable`.
    pub async fn alter_config(&self, name: &str, config: TopicConfig) -> Result<(), ApiError> {
        self.commit(Command::AlterTopicConfig { name: name.to_string(), config }).await
    }

    /// # Errors
    /// `topic_not_found`, `invalid_topic` when `count` does not grow the topic.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<(), ApiError> {
        topic::validate_partitions(count)?;
        self.commit(Command::AddPartitions { name: name.to_string(), count }).await
    }

    /// # Errors
    /// `topic_not_found`, `unavailable`.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ApiError> {
        self.commit(Command::DeleteTopic { name: name.to_string() }).await
    }
}
