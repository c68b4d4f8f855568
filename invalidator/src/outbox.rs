//! Reading outbox rows into [`Event`]s. A row that cannot be read as an
//! event (hand-inserted, garbled) becomes a [`DeadLetter`] instead of an
//! error, so one bad row never blocks the queue.

use serde_json::Value;
use smartcache_core::keys::TableName;
use std::collections::HashMap;
use tokio_postgres::Row;

/// Claims (and deletes, effective at commit) the oldest pending rows; rows
/// another daemon holds are skipped. The caller commits only after Redis
/// has applied the batch, so a failure rolls the rows back into the queue.
pub const CLAIM_SQL: &str = "DELETE FROM smartcache.outbox WHERE id IN \
     (SELECT id FROM smartcache.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, table_schema, table_name, op::text, old_key, new_key, \
     old_row::text, new_row::text, \
     extract(epoch FROM clock_timestamp() - created_at)::float8";

/// Keeps an unreadable row for inspection.
pub const DEAD_LETTER_SQL: &str = "INSERT INTO smartcache.dead_letter (id, event, error) \
     VALUES ($1, $2::text::jsonb, $3) ON CONFLICT (id) DO NOTHING";

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// INSERT: the new row matters.
    Insert,
    /// UPDATE: the old and the new row matter.
    Update,
    /// DELETE: the old row matters.
    Delete,
    /// TRUNCATE: every key of the table.
    Truncate,
}

/// Column values of one row version, as text (`None` for SQL NULL).
pub type RowValues = HashMap<String, Option<String>>;

/// One version (old or new) of a changed row.
#[derive(Debug, Clone, Default)]
pub struct RowImage {
    /// Primary-key values in key order; `None` if the table has no key.
    pub key: Option<Vec<Option<String>>>,
    /// Template columns.
    pub values: RowValues,
}

/// A committed change, read from the outbox.
#[derive(Debug, Clone)]
pub struct Event {
    /// Outbox row id.
    pub id: i64,
    /// The changed table.
    pub table: TableName,
    /// What happened.
    pub op: Op,
    /// The row before the change (UPDATE, DELETE).
    pub old: Option<RowImage>,
    /// The row after the change (INSERT, UPDATE).
    pub new: Option<RowImage>,
}

/// An outbox row that could not be read.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Outbox row id.
    pub id: i64,
    /// The row as JSON text, for `smartcache.dead_letter`.
    pub event: String,
    /// Why it could not be read.
    pub error: String,
}

/// Reads one claimed row.
pub fn parse(row: &Row) -> Result<Event, DeadLetter> {
    let id: i64 = row.get(0);
    parse_fields(
        id,
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
        row.get(7),
    )
    .map_err(|error| {
        let text = |i: usize| row.get::<_, Option<String>>(i);
        let event = serde_json::json!({
            "id": id,
            "table_schema": text(1),
            "table_name": text(2),
            "op": text(3),
            "old_key": row.get::<_, Option<Vec<Option<String>>>>(4),
            "new_key": row.get::<_, Option<Vec<Option<String>>>>(5),
            "old_row": text(6),
            "new_row": text(7),
        });
        DeadLetter {
            id,
            event: event.to_string(),
            error,
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn parse_fields(
    id: i64,
    schema: String,
    table: String,
    op: String,
    old_key: Option<Vec<Option<String>>>,
    new_key: Option<Vec<Option<String>>>,
    old_row: Option<String>,
    new_row: Option<String>,
) -> Result<Event, String> {
    let op = match op.as_str() {
        "I" => Op::Insert,
        "U" => Op::Update,
        "D" => Op::Delete,
        "T" => Op::Truncate,
        other => return Err(format!("unknown op {other:?} (expected I, U, D or T)")),
    };
    let image = |key: Option<Vec<Option<String>>>, row: Option<String>, side: &str| {
        if key.is_none() && row.is_none() {
            return Ok(None);
        }
        let values = match row {
            None => RowValues::new(),
            Some(text) => row_values(&text).map_err(|e| format!("{side}_row: {e}"))?,
        };
        Ok::<_, String>(Some(RowImage { key, values }))
    };
    let old = image(old_key, old_row, "old")?;
    let new = image(new_key, new_row, "new")?;
    let needs = match op {
        Op::Insert => (false, true),
        Op::Update => (true, true),
        Op::Delete => (true, false),
        Op::Truncate => (false, false),
    };
    if needs.0 && old.is_none() {
        return Err(format!("{op:?} without old_key/old_row"));
    }
    if needs.1 && new.is_none() {
        return Err(format!("{op:?} without new_key/new_row"));
    }
    if schema.is_empty() || table.is_empty() {
        return Err("empty table_schema or table_name".into());
    }
    Ok(Event {
        id,
        table: TableName::new(schema, table),
        op,
        old,
        new,
    })
}

/// `{"col": "text" | null}`; other scalars are taken as their JSON text so
/// a hand-written row with `{"id": 5}` still works.
fn row_values(text: &str) -> Result<RowValues, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object of column values".into());
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(op: &str, old: Option<&str>, new: Option<&str>) -> Result<Event, String> {
        let key = |s: Option<&str>| s.map(|_| vec![Some("1".to_owned())]);
        parse_fields(
            1,
            "public".into(),
            "t".into(),
            op.into(),
            key(old),
            key(new),
            old.map(str::to_owned),
            new.map(str::to_owned),
        )
    }

    #[test]
    fn reads_an_update() {
        let e = p("U", Some(r#"{"c":"1"}"#), Some(r#"{"c":null}"#)).unwrap();
        assert_eq!(e.op, Op::Update);
        assert_eq!(e.old.unwrap().values["c"].as_deref(), Some("1"));
        assert_eq!(e.new.unwrap().values["c"], None);
    }

    #[test]
    fn scalars_are_taken_as_text() {
        let e = p("I", None, Some(r#"{"c":5}"#)).unwrap();
        assert_eq!(e.new.unwrap().values["c"].as_deref(), Some("5"));
    }

    #[test]
    fn garbled_rows_are_refused_with_a_reason() {
        assert!(p("X", None, None).unwrap_err().contains("unknown op"));
        assert!(p("U", None, Some("{}"))
            .unwrap_err()
            .contains("without old"));
        assert!(p("I", None, Some("[1]"))
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(p("I", None, Some("{")).unwrap_err().contains("not JSON"));
    }
}
