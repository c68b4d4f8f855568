//! Reading outbox rows into [`Event`]s. A row that cannot be read as an
//! event (hand-inserted, garbled) becomes a [`DeadLetter`] instead of an
//! error, so one bad row never blocks the queue.
//!
//! Two shapes are read. Capture writes one row per statement: `cols` names
//! the captured columns (the first `npk` form the primary key) and
//! `old_rows`/`new_rows` hold a JSON array per changed row with the values
//! in that order, or whole rows as JSON objects when `broken` names
//! columns a migration changed. Hand-written rows (and rows left by an
//! older version) describe one row: `old_key`/`new_key` and
//! `old_row`/`new_row` objects.

use serde_json::value::RawValue;
use smartcache_core::keys::TableName;
use std::collections::{BTreeSet, HashMap};
use tokio_postgres::Row;

/// Columns the claim returns, in this order, after the snapshot.
pub const CLAIMED_COLUMNS: &str = "o.id, o.table_schema, o.table_name, o.op::text, o.old_key, o.new_key, \
     o.old_row::text, o.new_row::text, o.cols, o.npk, o.broken, o.old_rows::text, o.new_rows::text, \
     extract(epoch FROM clock_timestamp() - o.created_at)::float8";

/// Keeps an unreadable row for inspection.
pub const DEAD_LETTER_SQL: &str = "INSERT INTO smartcache.dead_letter (id, event, error) \
     VALUES ($1, $2::text::jsonb, $3) ON CONFLICT (id) DO NOTHING";

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// INSERT: the new rows matter.
    Insert,
    /// UPDATE: the old and the new rows matter.
    Update,
    /// DELETE: the old rows matter.
    Delete,
    /// TRUNCATE: every key of the table.
    Truncate,
}

/// Column values of one row version, as text (`None` for SQL NULL).
pub type RowValues = HashMap<String, Option<String>>;

/// One version (old or new) of a changed row.
#[derive(Debug, Clone, Default)]
pub struct RowImage {
    /// Primary-key values in key order; `None` if the table has no key or
    /// capture could not read it.
    pub key: Option<Vec<Option<String>>>,
    /// Template columns present in the row.
    pub values: RowValues,
}

/// A committed change, read from the outbox: one statement's rows.
#[derive(Debug, Clone)]
pub struct Event {
    /// Outbox row id.
    pub id: i64,
    /// The changed table.
    pub table: TableName,
    /// What happened.
    pub op: Op,
    /// How many rows the statement changed (0 for TRUNCATE).
    pub changed: usize,
    /// Columns capture could not read as installed (renamed, dropped or
    /// retyped by a migration): keys built from them cannot be rendered.
    pub broken: BTreeSet<String>,
    /// The columns capture sent (`None` for a hand-written single-row
    /// event, where a missing column reads as NULL).
    pub captured: Option<BTreeSet<String>>,
    /// Seconds since the change, on the server's clock.
    pub age: f64,
    images: Images,
}

/// The row versions of an event: read one at a time, so a statement over
/// millions of rows never sits in memory as millions of maps.
#[derive(Debug, Clone)]
enum Images {
    Single(Vec<RowImage>),
    Statement {
        cols: Vec<String>,
        npk: usize,
        /// `old_rows` and `new_rows` as sent (JSON arrays, validated).
        sides: Vec<String>,
    },
}

impl Event {
    /// An event of one row, as a hand-written outbox row describes it.
    ///
    /// ```
    /// use smartcache_invalidator::outbox::{Event, Op, RowImage};
    /// use smartcache_core::keys::TableName;
    /// let row = RowImage { key: Some(vec![Some("1".into())]), values: Default::default() };
    /// let e = Event::single(7, TableName::parse("products").unwrap(), Op::Delete, vec![row]);
    /// assert_eq!(e.rows().count(), 1);
    /// ```
    pub fn single(id: i64, table: TableName, op: Op, rows: Vec<RowImage>) -> Self {
        Self {
            id,
            table,
            op,
            changed: 1,
            broken: BTreeSet::new(),
            captured: None,
            age: 0.0,
            images: Images::Single(rows),
        }
    }

    /// Every row version that matters (old and new images), a row's old
    /// image next to its new one: the two usually make the same keys, and
    /// a statement applied in chunks then meets each key in one chunk, not
    /// in one chunk per side. A row that cannot be read is an error naming
    /// it.
    pub fn rows(&self) -> impl Iterator<Item = Result<RowImage, String>> + '_ {
        let (single, statement) = match &self.images {
            Images::Single(rows) => (Some(rows.iter().cloned().map(Ok)), None),
            Images::Statement { cols, npk, sides } => {
                let mut parsed: Vec<std::vec::IntoIter<&RawValue>> = sides
                    .iter()
                    .map(|text| {
                        serde_json::from_str::<Vec<&RawValue>>(text)
                            .unwrap_or_default()
                            .into_iter()
                    })
                    .collect();
                let mut turn = 0;
                let rows = std::iter::from_fn(move || {
                    for _ in 0..parsed.len() {
                        let side = turn % parsed.len();
                        turn += 1;
                        if let Some(raw) = parsed[side].next() {
                            return Some(raw);
                        }
                    }
                    None
                })
                .map(move |raw| statement_row(raw, cols, *npk, &self.broken));
                (None, Some(rows))
            }
        };
        single
            .into_iter()
            .flatten()
            .chain(statement.into_iter().flatten())
    }
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

/// The claimed row's fields, owned, in the order of [`CLAIMED_COLUMNS`]
/// (starting at column `at` of `row`); or read from a doorbell payload,
/// `to_jsonb` of the row.
#[derive(serde::Deserialize)]
struct Fields {
    id: i64,
    #[serde(rename = "table_schema")]
    schema: String,
    #[serde(rename = "table_name")]
    table: String,
    op: String,
    #[serde(default)]
    old_key: Option<Vec<Option<String>>>,
    #[serde(default)]
    new_key: Option<Vec<Option<String>>>,
    #[serde(default, deserialize_with = "json_text")]
    old_row: Option<String>,
    #[serde(default, deserialize_with = "json_text")]
    new_row: Option<String>,
    #[serde(default)]
    cols: Option<Vec<String>>,
    #[serde(default)]
    npk: Option<i16>,
    #[serde(default)]
    broken: Option<Vec<String>>,
    #[serde(default, deserialize_with = "json_text")]
    old_rows: Option<String>,
    #[serde(default, deserialize_with = "json_text")]
    new_rows: Option<String>,
    /// Not in a payload: the daemon applies it at once.
    #[serde(skip)]
    age: f64,
}

impl Fields {
    fn read(row: &Row, at: usize) -> Self {
        Self {
            id: row.get(at),
            schema: row.get(at + 1),
            table: row.get(at + 2),
            op: row.get(at + 3),
            old_key: row.get(at + 4),
            new_key: row.get(at + 5),
            old_row: row.get(at + 6),
            new_row: row.get(at + 7),
            cols: row.get(at + 8),
            npk: row.get(at + 9),
            broken: row.get(at + 10),
            old_rows: row.get(at + 11),
            new_rows: row.get(at + 12),
            age: row.get::<_, Option<f64>>(at + 13).unwrap_or(0.0),
        }
    }

    fn dead(self, error: String) -> DeadLetter {
        let event = serde_json::json!({
            "id": self.id,
            "table_schema": self.schema,
            "table_name": self.table,
            "op": self.op,
            "old_key": self.old_key,
            "new_key": self.new_key,
            "old_row": self.old_row,
            "new_row": self.new_row,
            "cols": self.cols,
            "npk": self.npk,
            "broken": self.broken,
            "old_rows": self.old_rows,
            "new_rows": self.new_rows,
        });
        DeadLetter {
            id: self.id,
            event: event.to_string(),
            error,
        }
    }
}

/// Sets aside a claimed row (outbox columns from column `at`) that turned
/// out unreadable while its rows were applied.
pub fn dead_letter(row: &Row, at: usize, error: String) -> DeadLetter {
    Fields::read(row, at).dead(error)
}

/// Reads one claimed row whose outbox columns start at column `at`.
pub fn parse(row: &Row, at: usize) -> Result<Event, DeadLetter> {
    let f = Fields::read(row, at);
    match event(&f) {
        Ok(e) => Ok(e),
        Err(error) => Err(f.dead(error)),
    }
}

/// Reads the outbox row a doorbell notification carries. Anyone may
/// NOTIFY the channel, so anything else is an error naming what is wrong,
/// never a panic.
///
/// ```
/// use smartcache_invalidator::outbox::{from_payload, Op};
/// let e = from_payload(r#"{"id": 7, "table_schema": "public", "table_name": "products",
///     "op": "U", "cols": ["id"], "npk": 1, "old_rows": [[1]], "new_rows": [[1]]}"#).unwrap();
/// assert_eq!((e.id, e.op, e.rows().count()), (7, Op::Update, 2));
/// assert!(from_payload("").is_err());
/// ```
pub fn from_payload(text: &str) -> Result<Event, String> {
    let f: Fields = serde_json::from_str(text).map_err(|e| format!("not an outbox row: {e}"))?;
    event(&f)
}

/// A JSON value as its text (the claim reads `jsonb` columns as text).
fn json_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw: Option<Box<RawValue>> = serde::Deserialize::deserialize(d)?;
    Ok(raw.map(|r| r.get().to_owned()))
}

fn event(f: &Fields) -> Result<Event, String> {
    let op = match f.op.as_str() {
        "I" => Op::Insert,
        "U" => Op::Update,
        "D" => Op::Delete,
        "T" => Op::Truncate,
        other => return Err(format!("unknown op {other:?} (expected I, U, D or T)")),
    };
    if f.schema.is_empty() || f.table.is_empty() {
        return Err("empty table_schema or table_name".into());
    }
    let needs = match op {
        Op::Insert => (false, true),
        Op::Update => (true, true),
        Op::Delete => (true, false),
        Op::Truncate => (false, false),
    };
    let mut changed = 1;
    let broken: BTreeSet<String> = f.broken.iter().flatten().cloned().collect();
    let images = if let Some(cols) = &f.cols {
        let npk = usize::try_from(f.npk.unwrap_or(0))
            .unwrap_or(0)
            .min(cols.len());
        let mut sides = Vec::new();
        for (side, text, needed) in [
            ("old_rows", &f.old_rows, needs.0),
            ("new_rows", &f.new_rows, needs.1),
        ] {
            match text {
                Some(text) => {
                    let rows: Vec<&RawValue> = serde_json::from_str(text)
                        .map_err(|e| format!("{side}: not a JSON array: {e}"))?;
                    if let Some(first) = rows.first() {
                        statement_row(first, cols, npk, &broken)
                            .map_err(|e| format!("{side}: {e}"))?;
                    }
                    changed = rows.len();
                    sides.push(text.clone());
                }
                None if needed => return Err(format!("{op:?} without {side}")),
                None => {}
            }
        }
        Images::Statement {
            cols: cols.clone(),
            npk,
            sides,
        }
    } else {
        let image = |key: &Option<Vec<Option<String>>>, row: &Option<String>, side: &str| {
            if key.is_none() && row.is_none() {
                return Ok(None);
            }
            let values = match row {
                None => RowValues::new(),
                Some(text) => row_values(text).map_err(|e| format!("{side}_row: {e}"))?,
            };
            Ok::<_, String>(Some(RowImage {
                key: key.clone(),
                values,
            }))
        };
        let old = image(&f.old_key, &f.old_row, "old")?;
        let new = image(&f.new_key, &f.new_row, "new")?;
        if needs.0 && old.is_none() {
            return Err(format!("{op:?} without old_key/old_row"));
        }
        if needs.1 && new.is_none() {
            return Err(format!("{op:?} without new_key/new_row"));
        }
        Images::Single(old.into_iter().chain(new).collect())
    };
    if op == Op::Truncate {
        changed = 0;
    }
    Ok(Event {
        id: f.id,
        changed,
        table: TableName::new(f.schema.clone(), f.table.clone()),
        op,
        broken,
        images,
        captured: f.cols.as_ref().map(|c| c.iter().cloned().collect()),
        age: f.age,
    })
}

/// Reads one row: `[v, …]` (values in the order of `cols`) or `{col: v}`
/// (a whole row, sent when columns are `broken`; a captured column it
/// lacks reads as absent, so templates using it are not rendered).
fn statement_row(
    raw: &RawValue,
    cols: &[String],
    npk: usize,
    broken: &BTreeSet<String>,
) -> Result<RowImage, String> {
    let values: RowValues = match raw.get().as_bytes().first() {
        Some(b'[') => {
            let values: Vec<&RawValue> =
                serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            if values.len() != cols.len() {
                return Err(format!(
                    "a row has {} values for {} columns",
                    values.len(),
                    cols.len()
                ));
            }
            cols.iter()
                .zip(values)
                .map(|(c, v)| Ok((c.clone(), scalar(v)?)))
                .collect::<Result<_, String>>()?
        }
        Some(b'{') => {
            let object: HashMap<String, &RawValue> =
                serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            object
                .into_iter()
                .filter(|(k, _)| cols.contains(k) && !broken.contains(k))
                .map(|(k, v)| Ok((k, scalar(v)?)))
                .collect::<Result<_, String>>()?
        }
        _ => return Err("a row is neither a JSON array nor an object".into()),
    };
    let key = (npk > 0 && cols[..npk].iter().all(|c| values.contains_key(c)))
        .then(|| cols[..npk].iter().map(|c| values[c].clone()).collect());
    Ok(RowImage { key, values })
}

/// A JSON value as the text PostgreSQL's `#>> '{}'` gives: strings
/// unquoted, `null` as SQL NULL, anything else as written (`1.50` stays
/// `1.50`).
fn scalar(raw: &RawValue) -> Result<Option<String>, String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(Some)
            .map_err(|e| e.to_string()),
        _ if text == "null" => Ok(None),
        _ => Ok(Some(text.to_owned())),
    }
}

/// `{"col": "text" | null}`; other scalars are taken as their JSON text so
/// a hand-written row with `{"id": 5}` still works.
fn row_values(text: &str) -> Result<RowValues, String> {
    let value: HashMap<String, &RawValue> = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        }
        Ok(_) => return Err("not a JSON object of column values".into()),
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    value
        .into_iter()
        .map(|(k, v)| Ok((k, scalar(v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doorbell_payload_reads_like_the_claimed_row() {
        // As `to_jsonb` of an outbox row renders it, nulls included.
        let text = r#"{"id": 9, "op": "U", "npk": 1, "cols": ["id", "category_id"], "broken": null,
            "new_key": null, "new_row": null, "old_key": null, "old_row": null,
            "new_rows": [[5, 1]], "old_rows": [[5, 5]], "created_at": "2026-12-07T22:55:22.300737+00:00",
            "table_name": "products", "table_schema": "public"}"#;
        let e = from_payload(text).unwrap();
        assert_eq!((e.id, e.op, e.changed), (9, Op::Update, 1));
        let rows: Vec<RowImage> = e.rows().map(Result::unwrap).collect();
        assert_eq!(rows[0].values["category_id"].as_deref(), Some("5"));
        assert_eq!(rows[1].values["category_id"].as_deref(), Some("1"));
        for junk in [
            "",
            "null",
            "[]",
            r#"{"id": "x"}"#,
            r#"{"id": 1, "table_schema": "public", "table_name": "t", "op": "X"}"#,
        ] {
            assert!(from_payload(junk).is_err(), "{junk:?} was read");
        }
    }

    fn fields(op: &str) -> Fields {
        Fields {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            op: op.into(),
            old_key: None,
            new_key: None,
            old_row: None,
            new_row: None,
            cols: None,
            npk: None,
            broken: None,
            old_rows: None,
            new_rows: None,
            age: 0.0,
        }
    }

    fn rows(e: &Event) -> Vec<RowImage> {
        e.rows().collect::<Result<_, _>>().unwrap()
    }

    fn single(op: &str, old: Option<&str>, new: Option<&str>) -> Result<Event, String> {
        let key = |s: Option<&str>| s.map(|_| vec![Some("1".to_owned())]);
        let mut f = fields(op);
        f.old_key = key(old);
        f.new_key = key(new);
        f.old_row = old.map(str::to_owned);
        f.new_row = new.map(str::to_owned);
        event(&f)
    }

    #[test]
    fn reads_a_single_row_update() {
        let e = single("U", Some(r#"{"c":"1"}"#), Some(r#"{"c":null}"#)).unwrap();
        assert_eq!(e.op, Op::Update);
        assert_eq!(rows(&e)[0].values["c"].as_deref(), Some("1"));
        assert_eq!(rows(&e)[1].values["c"], None);
    }

    #[test]
    fn scalars_are_taken_as_their_text() {
        let e = single("I", None, Some(r#"{"c":5, "d": 1.50, "e": true}"#)).unwrap();
        let v = &rows(&e)[0].values;
        assert_eq!(v["c"].as_deref(), Some("5"));
        assert_eq!(v["d"].as_deref(), Some("1.50"));
        assert_eq!(v["e"].as_deref(), Some("true"));
    }

    #[test]
    fn garbled_rows_are_refused_with_a_reason() {
        assert!(single("X", None, None).unwrap_err().contains("unknown op"));
        assert!(single("U", None, Some("{}"))
            .unwrap_err()
            .contains("without old"));
        assert!(single("I", None, Some("[1]"))
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(single("I", None, Some("{"))
            .unwrap_err()
            .contains("not JSON"));
    }

    fn statement(op: &str, old: Option<&str>, new: Option<&str>) -> Result<Event, String> {
        let mut f = fields(op);
        f.cols = Some(vec!["id".into(), "cat".into()]);
        f.npk = Some(1);
        f.old_rows = old.map(str::to_owned);
        f.new_rows = new.map(str::to_owned);
        event(&f)
    }

    #[test]
    fn reads_a_statement_of_many_rows() {
        let e = statement(
            "U",
            Some(r#"[[1, "a"], [2, null]]"#),
            Some(r#"[[1, "b"], [2, "c"]]"#),
        )
        .unwrap();
        assert_eq!(rows(&e).len(), 4);
        assert_eq!(rows(&e)[2].key, Some(vec![Some("2".into())]));
        assert_eq!(rows(&e)[2].values["cat"], None);
        assert_eq!(rows(&e)[3].values["cat"].as_deref(), Some("c"));
        assert!(e.broken.is_empty());
    }

    #[test]
    fn a_rows_old_image_comes_next_to_its_new_one() {
        let e = statement(
            "U",
            Some(r#"[[1, "a"], [2, "b"], [3, "c"]]"#),
            Some(r#"[[1, "x"], [2, "y"]]"#),
        )
        .unwrap();
        let cats: Vec<String> = rows(&e)
            .iter()
            .map(|r| r.values["cat"].clone().unwrap())
            .collect();
        assert_eq!(cats, ["a", "x", "b", "y", "c"]);
    }

    #[test]
    fn whole_rows_name_the_columns_they_lack() {
        let mut f = fields("U");
        f.cols = Some(vec!["id".into(), "cat".into()]);
        f.npk = Some(1);
        f.broken = Some(vec!["cat".into()]);
        f.old_rows = Some(r#"[{"id": 1, "cat_id": 5, "name": "x"}]"#.into());
        f.new_rows = Some(r#"[{"id": 1, "cat_id": 6, "name": "y"}]"#.into());
        let e = event(&f).unwrap();
        assert_eq!(e.broken, BTreeSet::from(["cat".to_owned()]));
        assert_eq!(rows(&e)[0].key, Some(vec![Some("1".into())]));
        assert!(
            !rows(&e)[0].values.contains_key("name"),
            "only captured columns are kept"
        );
    }

    #[test]
    fn a_broken_primary_key_gives_no_row_key() {
        let mut f = fields("I");
        f.cols = Some(vec!["id".into()]);
        f.npk = Some(1);
        f.broken = Some(vec!["id".into()]);
        f.new_rows = Some(r#"[{"ident": 1}]"#.into());
        let e = event(&f).unwrap();
        assert_eq!(rows(&e)[0].key, None);
        assert!(e.broken.contains("id"));
    }

    #[test]
    fn garbled_statement_rows_are_refused() {
        assert!(statement("U", None, Some("[[1, 2]]"))
            .unwrap_err()
            .contains("without old_rows"));
        assert!(statement("I", None, Some("[[1]]"))
            .unwrap_err()
            .contains("1 values for 2"));
        assert!(statement("I", None, Some("[3]"))
            .unwrap_err()
            .contains("neither"));
        assert!(statement("I", None, Some("{}"))
            .unwrap_err()
            .contains("not a JSON array"));
    }
}
