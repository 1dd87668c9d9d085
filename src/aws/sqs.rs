//! `WorkQueue` over SQS, plus the queue depths `fanout status` shows.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};

use super::{classify, classify_entry};
use crate::ports::{EntryFailure, Message, OutgoingMessage, PortError, WorkQueue};

const SERVICE: &str = "sqs";

/// Why an SQS request failed outside the `WorkQueue` port.
#[derive(Debug, thiserror::Error)]
pub enum SqsError {
    /// A request could not even be built (a required field missing).
    #[error("building the SQS request for {queue_url}: {source}")]
    Build {
        /// The queue addressed.
        queue_url: String,
        /// The SDK's error.
        source: aws_sdk_sqs::error::BuildError,
    },
    /// A GetQueueAttributes call failed.
    #[error("GetQueueAttributes on {queue_url}: {source}")]
    Attributes {
        /// The queue addressed.
        queue_url: String,
        /// The call's error.
        source: PortError,
    },
}

/// One SQS queue by URL.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

pub use crate::ports::QueueDepth as Depth;

impl SqsQueue {
    /// The queue at `url`.
    pub fn new(client: Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn build_error(&self, source: aws_sdk_sqs::error::BuildError) -> PortError {
        PortError::Permanent {
            service: SERVICE,
            code: "BuildError".into(),
            message: SqsError::Build {
                queue_url: self.url.clone(),
                source,
            }
            .to_string(),
        }
    }

    /// The client's timeouts with a long poll's `wait` on top of the
    /// attempt and operation timeouts: SQS holds the request that long
    /// before it answers an empty queue, which is no hang.
    fn long_poll_timeouts(&self, wait: Duration) -> Option<TimeoutConfig> {
        let base = self.client.config().timeout_config()?;
        let mut t = base.to_builder();
        t.set_operation_attempt_timeout(base.operation_attempt_timeout().map(|d| d + wait));
        t.set_operation_timeout(base.operation_timeout().map(|d| d + wait));
        Some(t.build())
    }

    /// Visible, in-flight and delayed counts (approximate, as SQS says).
    pub async fn depth(&self) -> Result<Depth, SqsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| SqsError::Attributes {
                queue_url: self.url.clone(),
                source: classify(SERVICE, &e),
            })?;
        let attrs = out.attributes().cloned().unwrap_or_default();
        let get = |k: QueueAttributeName| {
            attrs
                .get(&k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

/// Per-entry failures of a batch call, by the index the entry id carries.
fn entry_failures(failed: &[BatchResultErrorEntry]) -> Vec<EntryFailure> {
    failed
        .iter()
        .filter_map(|f| {
            let index = f.id().parse::<usize>().ok()?;
            Some(EntryFailure {
                index,
                error: classify_entry(SERVICE, f.code(), f.message(), f.sender_fault()),
            })
        })
        .collect()
}

/// The longest long poll SQS allows.
const MAX_WAIT_SECS: i32 = 20;

fn secs_i32(d: Duration) -> i32 {
    d.as_secs().min(i32::MAX as u64) as i32
}

impl WorkQueue for SqsQueue {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, PortError> {
        let wait_s = secs_i32(wait).min(MAX_WAIT_SECS);
        let request = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .visibility_timeout(secs_i32(visibility))
            .wait_time_seconds(wait_s)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        let wait = Duration::from_secs(u64::from(wait_s.unsigned_abs()));
        let out = match self.long_poll_timeouts(wait) {
            Some(t) => {
                request
                    .customize()
                    .config_override(aws_sdk_sqs::config::Builder::default().timeout_config(t))
                    .send()
                    .await
            }
            None => request.send().await,
        }
        .map_err(|e| classify(SERVICE, &e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Message {
                    id: m.message_id().unwrap_or_default().to_string(),
                    receipt: m.receipt_handle().unwrap_or_default().to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receive_count,
                }
            })
            .collect())
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<EntryFailure>, PortError> {
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.build_error(e))?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(entry_failures(out.failed()))
    }

    async fn change_visibility_batch(
        &self,
        receipts: &[String],
        visibility: Duration,
    ) -> Result<Vec<EntryFailure>, PortError> {
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .visibility_timeout(secs_i32(visibility))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.build_error(e))?;
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(entry_failures(out.failed()))
    }

    async fn send_batch(
        &self,
        entries: &[OutgoingMessage],
    ) -> Result<Vec<EntryFailure>, PortError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut built = Vec::with_capacity(entries.len());
        for (i, m) in entries.iter().enumerate() {
            let mut attrs = HashMap::new();
            for (k, v) in &m.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(|e| self.build_error(e))?;
                attrs.insert(k.clone(), value);
            }
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body)
                .delay_seconds(secs_i32(m.delay).min(900))
                .set_message_attributes((!attrs.is_empty()).then_some(attrs))
                .build()
                .map_err(|e| self.build_error(e))?;
            built.push(entry);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(built))
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(entry_failures(out.failed()))
    }

    async fn depth(&self) -> Result<Depth, PortError> {
        SqsQueue::depth(self).await.map_err(|e| match e {
            SqsError::Attributes { source, .. } => source,
            SqsError::Build { .. } => PortError::Permanent {
                service: SERVICE,
                code: "BuildError".into(),
                message: e.to_string(),
            },
        })
    }
}
