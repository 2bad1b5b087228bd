//! Topic administration over gRPC.

use std::collections::HashMap;

use strata_proto::v1 as pb;
use tonic::transport::Channel;

use crate::ClientError;

/// Admin calls (`strata.v1.Admin`).
#[derive(Debug, Clone)]
pub struct Admin {
    client: pb::admin_client::AdminClient<Channel>,
}

impl Admin {
    pub(crate) fn new(channel: Channel) -> Self {
        Self { client: pb::admin_client::AdminClient::new(channel) }
    }

    /// # Errors
    /// The server's status (`ALREADY_EXISTS`, `INVALID_ARGUMENT`, ...).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: HashMap<String, String>,
    ) -> Result<pb::TopicInfo, ClientError> {
        let request = pb::CreateTopicRequest { name: name.to_string(), partitions, replication_factor: 0, config };
        Ok(self.client.clone().create_topic(request).await?.into_inner())
    }

    /// # Errors
    /// The server's status.
    pub async fn list_topics(&self) -> Result<Vec<pb::TopicInfo>, ClientError> {
        Ok(self.client.clone().list_topics(pb::ListTopicsRequest {}).await?.into_inner().topics)
    }

    /// # Errors
    /// `NOT_FOUND` for an unknown topic.
    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicInfo, ClientError> {
        Ok(self.client.clone().describe_topic(pb::TopicRequest { name: name.to_string() }).await?.into_inner())
    }

    /// # Errors
    /// The server's status.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        config: HashMap<String, String>,
    ) -> Result<pb::TopicInfo, ClientError> {
        let request = pb::AlterTopicConfigRequest { name: name.to_string(), config };
        Ok(self.client.clone().alter_topic_config(request).await?.into_inner())
    }

    /// # Errors
    /// The server's status.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<pb::TopicInfo, ClientError> {
        Ok(self
            .client
            .clone()
            .add_partitions(pb::AddPartitionsRequest { name: name.to_string(), count })
            .await?
            .into_inner())
    }

    /// # Errors
    /// `NOT_FOUND` for an unknown topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.client.clone().delete_topic(pb::TopicRequest { name: name.to_string() }).await?;
        Ok(())
    }

    /// Checks every local segment's CRCs and every tiered object against the tier manifest.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown topic; `UNAVAILABLE` when the object store does not answer.
    pub async fn verify_topic(&self, name: &str) -> Result<pb::VerifyTopicResponse, ClientError> {
        Ok(self.client.clone().verify_topic(pb::TopicRequest { name: name.to_string() }).await?.into_inner())
    }

    /// # Errors
    /// The server's status.
    pub async fn list_groups(&self) -> Result<Vec<String>, ClientError> {
        Ok(self.client.clone().list_groups(pb::ListGroupsRequest {}).await?.into_inner().groups)
    }

    /// # Errors
    /// `NOT_FOUND` for an unknown group.
    pub async fn describe_group(&self, group: &str) -> Result<pb::GroupInfo, ClientError> {
        Ok(self.client.clone().describe_group(pb::GroupRequest { group: group.to_string() }).await?.into_inner())
    }

    /// Moves a group's committed offsets for every partition of `topic` (the group must have no
    /// members). Returns `(partition, offset)` pairs.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` while the group has members; `NOT_FOUND` for an unknown topic.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        to: crate::Start,
    ) -> Result<Vec<(u32, u64)>, ClientError> {
        use pb::reset_group_offsets_request::To;
        let to = match to {
            crate::Start::Offset(o) => To::Offset(o),
            crate::Start::Timestamp(ts) => To::TimestampMs(ts),
            crate::Start::Earliest => To::Position(pb::Position::Earliest as i32),
            crate::Start::Latest => To::Position(pb::Position::Latest as i32),
        };
        let request = pb::ResetGroupOffsetsRequest { group: group.to_string(), topic: topic.to_string(), to: Some(to) };
        let response = self.client.clone().reset_group_offsets(request).await?.into_inner();
        Ok(response.offsets.into_iter().map(|o| (o.partition, o.offset)).collect())
    }

    /// # Errors
    /// `FAILED_PRECONDITION` while the group has members.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.client.clone().delete_group(pb::GroupRequest { group: group.to_string() }).await?;
        Ok(())
    }
}
