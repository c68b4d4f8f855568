//! Checks the configuration against the live database: tables exist,
//! template columns exist, primary keys are known.

use crate::config::{Config, ConfigError, TableSpec};
use tokio_postgres::Client;

/// A configured table resolved against the catalog.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    /// The configured table.
    pub spec: TableSpec,
    /// Primary-key columns in key order (empty when the table has none).
    pub pk: Vec<String>,
    /// Template columns that are not part of the primary key.
    pub other: Vec<String>,
    /// Captured columns of type `timestamptz`, rendered in UTC.
    pub utc: Vec<String>,
}

/// Resolves every configured table. A missing table or column is a
/// [`ConfigError`] naming it.
pub async fn resolve(client: &Client, config: &Config) -> anyhow::Result<Vec<ResolvedTable>> {
    let mut out = Vec::with_capacity(config.tables.len());
    for spec in &config.tables {
        let rows = client
            .query(
                "SELECT c.oid, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&spec.name.schema(), &spec.name.name()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(ConfigError(format!(
                "{}: table `{}` does not exist in the database; create it or fix [[tables]] name \
                 (names are case-sensitive, unqualified means schema public)",
                config.origin(),
                spec.name
            ))
            .into());
        };
        let oid: u32 = row.get(0);
        let kind: String = row.get(1);
        if kind != "r" {
            return Err(ConfigError(format!(
                "{}: `{}` is not an ordinary table (relkind {kind}); only plain tables can be watched \
                 (for a partitioned table, list its partitions)",
                config.origin(),
                spec.name
            ))
            .into());
        }
        let typed: Vec<(String, bool)> = client
            .query(
                "SELECT attname::text, atttypid = 'timestamptz'::regtype FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let columns: Vec<String> = typed.iter().map(|(c, _)| c.clone()).collect();
        for template in &spec.keys {
            if let Some(col) = template.columns().find(|c| !columns.iter().any(|x| x == c)) {
                return Err(ConfigError(format!(
                    "{}: table `{}`: key template \"{template}\" uses column `{col}`, which the table \
                     does not have (columns: {})",
                    config.origin(),
                    spec.name,
                    columns.join(", ")
                ))
                .into());
            }
        }
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
        if pk.is_empty() {
            tracing::warn!(table = %spec.name, "table has no primary key: row dependencies cannot be tracked, only the table and its key templates");
        }
        let other: Vec<String> = spec
            .template_columns()
            .into_iter()
            .filter(|c| !pk.iter().any(|p| p == c))
            .map(str::to_owned)
            .collect();
        let utc = typed
            .into_iter()
            .filter(|(c, tz)| *tz && (pk.contains(c) || other.contains(c)))
            .map(|(c, _)| c)
            .collect();
        out.push(ResolvedTable {
            spec: spec.clone(),
            pk,
            other,
            utc,
        });
    }
    Ok(out)
}
