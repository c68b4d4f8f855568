//! Checks the configuration against the live database: tables exist,
//! template columns exist, primary keys and column types are known.

use crate::config::{Config, ConfigError, TableSpec};
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// A captured column's type as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// Schema-qualified type name, as `regtype` input (`pg_catalog.int4`).
    pub name: String,
    /// `atttypmod` (`-1` when the type has no modifier).
    pub typmod: i32,
    /// How people write it (`numeric(10,2)`), for messages.
    pub display: String,
}

/// A configured table resolved against the catalog.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    /// The configured table.
    pub spec: TableSpec,
    /// A partitioned table: captured by row triggers that every current and
    /// future partition inherits.
    pub partitioned: bool,
    /// Every partition (at any level) of a partitioned table, as
    /// `(schema, name)`: each needs its own TRUNCATE trigger.
    pub partitions: Vec<(String, String)>,
    /// Primary-key columns in key order (empty when the table has none).
    pub pk: Vec<String>,
    /// Template columns that are not part of the primary key.
    pub other: Vec<String>,
    /// Types of the captured columns (`pk` and `other`) that exist.
    pub types: BTreeMap<String, ColumnType>,
    /// Template columns the table does not have: `(template, column)`.
    pub unknown: Vec<(String, String)>,
    /// Every column of the table, for messages.
    pub columns: Vec<String>,
}

impl ResolvedTable {
    /// The captured columns: the primary key first, then the other
    /// template columns.
    pub fn captured(&self) -> impl Iterator<Item = &String> {
        self.pk.iter().chain(&self.other)
    }
}

/// What went wrong resolving one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No relation of that name.
    Missing,
    /// A relation that cannot be watched (a view, a foreign table…).
    NotATable(String),
}

impl Unresolved {
    /// A message naming the table and what to do.
    pub fn message(&self, config: &Config, spec: &TableSpec) -> String {
        let origin = config.origin();
        let t = &spec.name;
        match self {
            Self::Missing => format!(
                "{origin}: table `{t}` does not exist in the database; create it or fix [[tables]] name \
                 (names are case-sensitive, unqualified means schema public)"
            ),
            Self::NotATable(kind) => format!(
                "{origin}: `{t}` is not a table (relkind {kind}); only plain and partitioned tables can be watched"
            ),
        }
    }
}

/// Resolves every configured table. A missing table or column is a
/// [`ConfigError`] naming it.
pub async fn resolve(client: &Client, config: &Config) -> anyhow::Result<Vec<ResolvedTable>> {
    let mut out = Vec::with_capacity(config.tables.len());
    for spec in &config.tables {
        match resolve_one(client, spec).await? {
            Ok(t) => {
                if let Some((template, column)) = t.unknown.first() {
                    return Err(ConfigError(format!(
                        "{}: table `{}`: key template \"{template}\" uses column `{column}`, which the table \
                         does not have (columns: {})",
                        config.origin(),
                        spec.name,
                        t.columns.join(", ")
                    ))
                    .into());
                }
                out.push(t)
            }
            Err(e) => return Err(ConfigError(e.message(config, spec)).into()),
        }
    }
    Ok(out)
}

/// Resolves one table; `Err` when the catalog does not match the config.
pub async fn resolve_one(
    client: &Client,
    spec: &TableSpec,
) -> Result<Result<ResolvedTable, Unresolved>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&spec.name.schema(), &spec.name.name()],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(Err(Unresolved::Missing));
    };
    let oid: u32 = row.get(0);
    let kind: String = row.get(1);
    if kind != "r" && kind != "p" {
        return Ok(Err(Unresolved::NotATable(kind)));
    }
    let columns: Vec<(String, ColumnType)> = client
        .query(
            "SELECT a.attname::text, quote_ident(tn.nspname) || '.' || quote_ident(t.typname), \
                    a.atttypmod, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_namespace tn ON tn.oid = t.typnamespace \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                ColumnType {
                    name: r.get(1),
                    typmod: r.get(2),
                    display: r.get(3),
                },
            )
        })
        .collect();
    let mut unknown = Vec::new();
    for template in &spec.keys {
        for col in template.columns() {
            if !columns.iter().any(|(x, _)| x == col) {
                unknown.push((template.to_string(), col.to_owned()));
            }
        }
    }
    let names: Vec<String> = columns.iter().map(|(c, _)| c.clone()).collect();
    let pk: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let other: Vec<String> = spec
        .template_columns()
        .into_iter()
        .filter(|c| !pk.iter().any(|p| p == c) && names.iter().any(|n| n == c))
        .map(str::to_owned)
        .collect();
    let types = columns
        .into_iter()
        .filter(|(c, _)| pk.contains(c) || other.contains(c))
        .collect();
    let partitions = if kind == "p" {
        client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_partition_tree($1::oid::regclass) p \
                 JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE p.relid <> $1::oid::regclass ORDER BY 1, 2",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Ok(ResolvedTable {
        spec: spec.clone(),
        partitioned: kind == "p",
        partitions,
        pk,
        other,
        types,
        unknown,
        columns: names,
    }))
}
