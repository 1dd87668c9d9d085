//! DynamoDB: the claim record controllers share a ceiling through
//! (`control::claims`). One item per key (`pk`, a string): `version` (a
//! number every write bumps) and `record` (the claims as JSON). Reads are
//! strongly consistent; a write is conditional on the version read, so two
//! controllers cannot both take the same room.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::BoxFuture;

use super::classify;
use crate::ports::ClaimRecord as Record;
use crate::ports::{ClaimStore, PortError, StoredClaims};

const SERVICE: &str = "dynamodb";

/// The claim record at `key` in `table`.
#[derive(Debug, Clone)]
pub struct DynamoClaims {
    client: Client,
    table: String,
    key: String,
}

impl DynamoClaims {
    /// The record `key` of `table`.
    pub fn new(client: Client, table: &str, key: &str) -> DynamoClaims {
        DynamoClaims {
            client,
            table: table.to_owned(),
            key: key.to_owned(),
        }
    }

    fn broken(&self, what: &str) -> PortError {
        PortError::Permanent {
            service: SERVICE,
            code: "BadRecord".into(),
            message: format!(
                "item pk={} of table {}: {what}; delete the item (it is rebuilt within one renewal)",
                self.key, self.table
            ),
        }
    }

    async fn get(&self) -> Result<Option<StoredClaims>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(self.key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let version = item
            .get("version")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| self.broken("no numeric `version`"))?;
        let text = item
            .get("record")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| self.broken("no string `record`"))?;
        let record = serde_json::from_str(text)
            .map_err(|e| self.broken(&format!("`record` is not a claim record: {e}")))?;
        Ok(Some(StoredClaims { version, record }))
    }

    async fn put(&self, expected: Option<u64>, record: Record) -> Result<bool, PortError> {
        let text = serde_json::to_string(&record).map_err(|e| self.broken(&e.to_string()))?;
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(self.key.clone()))
            .item(
                "version",
                AttributeValue::N(expected.map_or(1, |v| v + 1).to_string()),
            )
            .item("record", AttributeValue::S(text));
        req = match expected {
            None => req.condition_expression("attribute_not_exists(pk)"),
            Some(v) => req
                .condition_expression("version = :v")
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let err = classify(SERVICE, &e);
                match &err {
                    PortError::Permanent { code, .. }
                        if code == "ConditionalCheckFailedException" =>
                    {
                        Ok(false)
                    }
                    _ => Err(err),
                }
            }
        }
    }
}

impl ClaimStore for DynamoClaims {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredClaims>, PortError>> {
        Box::pin(self.get())
    }

    fn save(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> BoxFuture<'_, Result<bool, PortError>> {
        Box::pin(self.put(expected, record))
    }
}
