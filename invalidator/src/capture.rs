//! Whether capture still works as installed, read from the catalog:
//! tables renamed or dropped, columns a migration renamed, dropped or
//! retyped, triggers disabled or missing, sessions that bypass triggers.
//! `check` prints these; the running daemon reports them on `/healthz`,
//! in a metric and in its log.

use crate::catalog::{self, Unresolved};

use crate::config::Config;
use crate::schema::{self, Captured, Installed};
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// One problem: what is wrong, what it costs, what to do.
pub type Problem = String;

/// Every problem with capture for the configured tables.
pub async fn problems(
    client: &Client,
    config: &Config,
    installed: &Installed,
) -> Result<Vec<Problem>, tokio_postgres::Error> {
    let mut out = Vec::new();
    if installed.version.is_none() {
        out.push(
            "smartcache is not installed in this database: run `smartcache-invalidator install`"
                .to_owned(),
        );
        return Ok(out);
    }
    for spec in &config.tables {
        let fname = schema::capture_function_name(&spec.name);
        let captured = installed
            .functions
            .get(&fname)
            .and_then(|f| f.captured.clone());
        let t = match catalog::resolve_one(client, spec).await? {
            Ok(t) => t,
            Err(Unresolved::Missing) => {
                let moved: Vec<String> = installed
                    .triggers
                    .iter()
                    .filter(|tr| tr.function == fname)
                    .map(|tr| format!("{}.{}", tr.table.0, tr.table.1))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                out.push(match moved.first() {
                    Some(now) => format!(
                        "table `{}` does not exist any more; its capture triggers are on `{now}` (renamed?): \
                         changes there are still captured under `{}`'s key templates. Rename it back, or \
                         update [[tables]] and run `smartcache-invalidator install`",
                        spec.name, spec.name
                    ),
                    None => format!(
                        "table `{}` does not exist (dropped?): nothing of it is captured. Remove it from \
                         [[tables]] and run `smartcache-invalidator install`, or create it and run install",
                        spec.name
                    ),
                });
                continue;
            }
            Err(e) => {
                out.push(e.message(config, spec));
                continue;
            }
        };
        for (template, column) in &t.unknown {
            out.push(format!(
                "column `{column}` of table `{}`, used by key template \"{template}\", does not exist any \
                 more (renamed or dropped): every key the template can produce is invalidated on each \
                 change of the table. Update the template and run `smartcache-invalidator install`",
                spec.name
            ));
        }
        if let Some(c) = &captured {
            out.extend(column_changes(c, &t));
        }
        let want = schema::desired_triggers(std::slice::from_ref(&t), config);
        for w in &want {
            let have = installed
                .triggers
                .iter()
                .find(|h| h.table == w.table && h.name == w.name);
            let on = format!("{}.{}", w.table.0, w.table.1);
            match have.map(|h| h.enabled.as_str()) {
                None if w.table.0 != t.spec.name.schema() || w.table.1 != t.spec.name.name() => {
                    out.push(format!(
                        "partition `{on}` of `{}` has no TRUNCATE capture (created after install): a TRUNCATE \
                         of the partition alone is missed. Run `smartcache-invalidator install`",
                        t.spec.name
                    ))
                }
                None => out.push(format!(
                    "capture trigger {} is missing on `{on}`: its changes are not captured. Run \
                     `smartcache-invalidator install`",
                    w.name
                )),
                Some(state) => out.extend(disabled(&w.name, &on, state, config)),
            }
        }
        for (table, name, state) in &installed.inherited {
            if t.partitions.contains(table) {
                let on = format!("{}.{}", table.0, table.1);
                out.extend(disabled(name, &on, state, config));
            }
        }
    }
    if !config.capture_in_replica_mode {
        out.extend(replica_sessions(client).await?);
    }
    Ok(out)
}

fn disabled(trigger: &str, on: &str, state: &str, config: &Config) -> Option<Problem> {
    match state {
        "D" => Some(format!(
            "capture trigger {trigger} on `{on}` is disabled (ALTER TABLE … DISABLE TRIGGER): its changes \
             bypass the outbox. Enable it again or run `smartcache-invalidator install`"
        )),
        "R" => Some(format!(
            "capture trigger {trigger} on `{on}` fires only in replica sessions: ordinary changes bypass the \
             outbox. Run `smartcache-invalidator install`"
        )),
        "O" if config.capture_in_replica_mode => Some(format!(
            "capture trigger {trigger} on `{on}` does not fire in replica sessions although \
             capture_in_replica_mode is set. Run `smartcache-invalidator install`"
        )),
        _ => None,
    }
}

/// Columns whose type or primary-key role changed since install.
fn column_changes(c: &Captured, t: &catalog::ResolvedTable) -> Vec<Problem> {
    let mut out = Vec::new();
    for col in &c.columns {
        match t.types.get(&col.name) {
            Some(now) if now.name != col.r#type || now.typmod != col.typmod => out.push(format!(
                "column `{}` of table `{}` changed type from {} to {} since install: its keys and row \
                 dependencies render differently now (42 may read 42.00), so every key built from it is \
                 invalidated on each change. Check the values the library passes to Dep::row, then run \
                 `smartcache-invalidator install`",
                col.name, t.spec.name, col.display, now.display
            )),
            _ => {}
        }
    }
    let pk_then: Vec<&str> = c.columns[..c.npk.min(c.columns.len())]
        .iter()
        .map(|x| x.name.as_str())
        .collect();
    if pk_then != t.pk.iter().map(String::as_str).collect::<Vec<_>>() {
        out.push(format!(
            "the primary key of `{}` changed from ({}) to ({}) since install: row dependencies cannot be \
             matched, so every row dependency of the table is invalidated on each change. Run \
             `smartcache-invalidator install`",
            t.spec.name,
            pk_then.join(", "),
            t.pk.join(", ")
        ));
    }
    out
}

/// Database or role defaults that make sessions skip triggers, and
/// logical-replication subscriptions, whose apply workers do.
async fn replica_sessions(client: &Client) -> Result<Vec<Problem>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let rows = client
        .query(
            "SELECT coalesce(r.rolname::text, 'every role') FROM pg_db_role_setting s \
             LEFT JOIN pg_roles r ON r.oid = s.setrole \
             WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
               AND (s.setdatabase <> 0 OR s.setrole <> 0) \
               AND EXISTS (SELECT FROM unnest(s.setconfig) c WHERE lower(c) = 'session_replication_role=replica')",
            &[],
        )
        .await?;
    for r in rows {
        let who: String = r.get(0);
        out.push(format!(
            "sessions of {who} in this database default to session_replication_role = replica: their changes \
             bypass capture. Set capture_in_replica_mode = true and run `smartcache-invalidator install`, or \
             remove the setting"
        ));
    }
    let subscriptions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_subscription WHERE subdbid = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await?
        .get(0);
    if subscriptions > 0 {
        out.push(format!(
            "this database has {subscriptions} logical-replication subscription(s): the changes they apply run \
             with session_replication_role = replica and bypass capture. Set capture_in_replica_mode = true \
             and run `smartcache-invalidator install`"
        ));
    }
    Ok(out)
}

/// The partitions of each configured partitioned table now, by table.
pub async fn partitions(
    client: &Client,
    config: &Config,
) -> Result<BTreeMap<String, Vec<(String, String)>>, tokio_postgres::Error> {
    let mut out = BTreeMap::new();
    for spec in &config.tables {
        if let Ok(t) = catalog::resolve_one(client, spec).await? {
            if t.partitioned {
                out.insert(t.spec.name.to_string(), t.partitions);
            }
        }
    }
    Ok(out)
}
