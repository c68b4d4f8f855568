//! Installing, upgrading, inspecting and removing the SQL objects.
//!
//! `install` computes a [`Plan`] from what is in the database and what the
//! config asks for, so running it twice changes nothing the second time and
//! `--dry-run` can print exactly what would run.

use crate::catalog::ResolvedTable;
use crate::sql::{ident, literal};
use smartcache_core::keys::TableName;
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// The schema version this binary installs.
pub const SCHEMA_VERSION: i32 = 1;

/// Upgrade scripts, applied in order from the installed version + 1.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../sql/001_schema.sql"))];

/// Name of the row trigger on each watched table.
pub const CAPTURE_TRIGGER: &str = "smartcache_capture";
/// Name of the TRUNCATE trigger on each watched table.
pub const TRUNCATE_TRIGGER: &str = "smartcache_truncate";

/// Key under which concurrent installs serialise.
const INSTALL_LOCK: i64 = 0x0073_6d63_6163_6865; // "smcache"

/// The statements `install` would run, in order.
#[derive(Debug, Default)]
pub struct Plan {
    /// SQL statements (each may hold several commands).
    pub statements: Vec<String>,
    /// One line per change, for the operator.
    pub summary: Vec<String>,
}

/// A trigger of ours found in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTrigger {
    /// `(schema, table)`.
    pub table: (String, String),
    /// Trigger name.
    pub name: String,
    /// Name of its function in schema `smartcache`.
    pub function: String,
}

/// What is installed now.
#[derive(Debug, Default)]
pub struct Installed {
    /// Schema version, `None` when not installed.
    pub version: Option<i32>,
    /// Doorbell channel stored in `smartcache.wakeup`.
    pub channel: Option<String>,
    /// Our triggers on any table.
    pub triggers: Vec<InstalledTrigger>,
    /// Generated capture functions: name → body.
    pub functions: BTreeMap<String, String>,
}

/// Prefix of the generated per-table capture functions.
const CAPTURE_PREFIX: &str = "capture:";

/// Reads the installed state.
pub async fn inspect(client: &Client) -> Result<Installed, tokio_postgres::Error> {
    let has_version: bool = client
        .query_one("SELECT to_regclass('smartcache.version') IS NOT NULL", &[])
        .await?
        .get(0);
    let mut installed = Installed::default();
    if has_version {
        installed.version = client
            .query_opt("SELECT schema_version FROM smartcache.version", &[])
            .await?
            .map(|r| r.get(0));
        installed.channel = client
            .query_opt("SELECT channel FROM smartcache.wakeup", &[])
            .await?
            .map(|r| r.get(0));
    }
    let rows = client
        .query(
            "SELECT tn.nspname::text, c.relname::text, t.tgname::text, p.proname::text \
             FROM pg_trigger t \
             JOIN pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_namespace pn ON pn.oid = p.pronamespace \
             JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace tn ON tn.oid = c.relnamespace \
             WHERE pn.nspname = 'smartcache' AND tn.nspname <> 'smartcache' \
               AND NOT t.tgisinternal \
             ORDER BY 1, 2, 3",
            &[],
        )
        .await?;
    for r in rows {
        installed.triggers.push(InstalledTrigger {
            table: (r.get(0), r.get(1)),
            name: r.get(2),
            function: r.get(3),
        });
    }
    let rows = client
        .query(
            "SELECT p.proname::text, p.prosrc FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'smartcache' AND starts_with(p.proname, $1)",
            &[&CAPTURE_PREFIX],
        )
        .await?;
    installed.functions = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(installed)
}

/// Name of the generated capture function of `table`: readable when it
/// fits PostgreSQL's 63 bytes, shortened with a hash otherwise.
pub fn capture_function_name(table: &TableName) -> String {
    let full = format!("{CAPTURE_PREFIX}{table}");
    if full.len() <= 63 {
        return full;
    }
    let mut cut = 44;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &full[..cut], fnv1a(full.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Body of the generated capture function of a table: one INSERT into the
/// outbox with the key and template columns read straight from OLD/NEW
/// (no whole-row conversion, no subqueries), then the doorbell if the
/// daemon is idle. Values are rendered as text the way jsonb renders them.
pub fn capture_function_body(t: &ResolvedTable) -> String {
    // A timestamptz renders in the session's time zone; a key must not
    // depend on the writer's session, so those columns are shown in UTC.
    let text_of = |rec: &str, col: &str| {
        let v = format!("{rec}.{}", ident(col));
        if t.utc.iter().any(|c| c == col) {
            format!(
                "to_jsonb({v} AT TIME ZONE 'UTC') #>> '{{}}' || CASE WHEN isfinite({v}) THEN '+00:00' ELSE '' END"
            )
        } else {
            format!("to_jsonb({v}) #>> '{{}}'")
        }
    };
    let key = |rec: &str| {
        if t.pk.is_empty() {
            "NULL".to_owned()
        } else {
            let parts: Vec<String> = t.pk.iter().map(|c| text_of(rec, c)).collect();
            format!("ARRAY[{}]", parts.join(", "))
        }
    };
    let row = |rec: &str| {
        let parts: Vec<String> =
            t.pk.iter()
                .chain(&t.other)
                .map(|c| format!("{}, {}", literal(c), text_of(rec, c)))
                .collect();
        format!("jsonb_build_object({})", parts.join(", "))
    };
    let insert = |op: char, old: bool, new: bool| {
        let (ok, or) = if old {
            (key("OLD"), row("OLD"))
        } else {
            ("NULL".into(), "NULL".into())
        };
        let (nk, nr) = if new {
            (key("NEW"), row("NEW"))
        } else {
            ("NULL".into(), "NULL".into())
        };
        format!(
            "INSERT INTO smartcache.outbox (table_schema, table_name, op, old_key, new_key, old_row, new_row, created_at)\n        \
             VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, '{op}',\n                {ok},\n                {nk},\n                {or},\n                {nr},\n                clock_timestamp());"
        )
    };
    format!(
        "\n-- generated by smartcache-invalidator install for {table}\nBEGIN\n    IF TG_OP = 'UPDATE' THEN\n        {u}\n    ELSIF TG_OP = 'INSERT' THEN\n        {i}\n    ELSE\n        {d}\n    END IF;\n    PERFORM pg_notify(channel, '') FROM smartcache.wakeup WHERE idle;\n    RETURN NULL;\nEND\n",
        table = t.spec.name,
        u = insert('U', true, true),
        i = insert('I', false, true),
        d = insert('D', true, false),
    )
}

fn create_function(name: &str, body: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION smartcache.{}() RETURNS trigger LANGUAGE plpgsql AS $fn${body}$fn$",
        ident(name)
    )
}

/// The triggers the config asks for.
pub fn desired_triggers(tables: &[ResolvedTable]) -> Vec<InstalledTrigger> {
    let mut out = Vec::new();
    for t in tables {
        let table = (
            t.spec.name.schema().to_owned(),
            t.spec.name.name().to_owned(),
        );
        out.push(InstalledTrigger {
            table: table.clone(),
            name: CAPTURE_TRIGGER.to_owned(),
            function: capture_function_name(&t.spec.name),
        });
        out.push(InstalledTrigger {
            table,
            name: TRUNCATE_TRIGGER.to_owned(),
            function: "capture_truncate".to_owned(),
        });
    }
    out.sort_by(|a, b| (&a.table, &a.name).cmp(&(&b.table, &b.name)));
    out
}

fn create_trigger(t: &InstalledTrigger) -> String {
    let table = format!("{}.{}", ident(&t.table.0), ident(&t.table.1));
    let (when, each) = if t.name == TRUNCATE_TRIGGER {
        ("TRUNCATE", "STATEMENT")
    } else {
        ("INSERT OR UPDATE OR DELETE", "ROW")
    };
    format!(
        "CREATE TRIGGER {} AFTER {when} ON {table} FOR EACH {each} EXECUTE FUNCTION smartcache.{}()",
        ident(&t.name),
        ident(&t.function)
    )
}

fn drop_trigger(t: &InstalledTrigger) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {}.{}",
        ident(&t.name),
        ident(&t.table.0),
        ident(&t.table.1)
    )
}

/// Computes what `install` must do to reach the config.
pub fn plan_install(
    installed: &Installed,
    tables: &[ResolvedTable],
    channel: &str,
) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let from = installed.version.unwrap_or(0);
    if from > SCHEMA_VERSION {
        anyhow::bail!(
            "the database has smartcache schema version {from}, newer than this binary's \
             {SCHEMA_VERSION}; upgrade smartcache-invalidator instead of installing an older schema"
        );
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        plan.statements.push((*sql).to_owned());
        plan.summary.push(format!(
            "apply schema version {version} (sql/00{version}_*.sql)"
        ));
    }
    if from < SCHEMA_VERSION {
        plan.statements.push(format!(
            "INSERT INTO smartcache.version (schema_version) VALUES ({SCHEMA_VERSION}) \
             ON CONFLICT (singleton) DO UPDATE SET schema_version = EXCLUDED.schema_version"
        ));
    }
    if installed.channel.as_deref() != Some(channel) {
        plan.statements.push(format!(
            "INSERT INTO smartcache.wakeup (channel) VALUES ({}) \
             ON CONFLICT (singleton) DO UPDATE SET channel = EXCLUDED.channel",
            literal(channel)
        ));
        plan.summary
            .push(format!("set doorbell channel to {channel:?}"));
    }
    for t in tables {
        let name = capture_function_name(&t.spec.name);
        let body = capture_function_body(t);
        if installed.functions.get(&name) != Some(&body) {
            plan.statements.push(create_function(&name, &body));
            plan.summary
                .push(format!("write capture function smartcache.{name}"));
        }
    }
    let want = desired_triggers(tables);
    for t in &installed.triggers {
        if !want.iter().any(|w| w.table == t.table && w.name == t.name) {
            plan.statements.push(drop_trigger(t));
            plan.summary.push(format!(
                "remove trigger {} from {}.{} (table no longer configured)",
                t.name, t.table.0, t.table.1
            ));
        }
    }
    for w in &want {
        match installed
            .triggers
            .iter()
            .find(|h| h.table == w.table && h.name == w.name)
        {
            Some(h) if h == w => {}
            Some(_) => {
                plan.statements.push(drop_trigger(w));
                plan.statements.push(create_trigger(w));
                plan.summary.push(format!(
                    "update trigger {} on {}.{}",
                    w.name, w.table.0, w.table.1
                ));
            }
            None => {
                plan.statements.push(create_trigger(w));
                plan.summary.push(format!(
                    "add trigger {} to {}.{}",
                    w.name, w.table.0, w.table.1
                ));
            }
        }
    }
    for name in installed.functions.keys() {
        if !want.iter().any(|w| &w.function == name) {
            plan.statements.push(format!(
                "DROP FUNCTION IF EXISTS smartcache.{}()",
                ident(name)
            ));
            plan.summary
                .push(format!("remove capture function smartcache.{name}"));
        }
    }
    Ok(plan)
}

/// Resolves the config against the database and plans the install.
pub async fn install_plan(client: &Client, config: &crate::config::Config) -> anyhow::Result<Plan> {
    let tables = crate::catalog::resolve(client, config).await?;
    let installed = inspect(client).await?;
    plan_install(&installed, &tables, &config.channel)
}

/// Runs a plan in one transaction, serialised against concurrent installs.
pub async fn apply(client: &mut Client, plan: &Plan) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK])
        .await?;
    for stmt in &plan.statements {
        tx.batch_execute(stmt).await?;
    }
    tx.commit().await
}

/// Removes every trigger of ours and the `smartcache` schema. Returns the
/// number of outbox rows that were still pending (and are now gone).
pub async fn uninstall(client: &mut Client) -> Result<i64, tokio_postgres::Error> {
    let installed = inspect(client).await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK])
        .await?;
    let pending: i64 = if installed.version.is_some() {
        tx.query_one("SELECT count(*) FROM smartcache.outbox", &[])
            .await?
            .get(0)
    } else {
        0
    };
    for t in &installed.triggers {
        tx.batch_execute(&drop_trigger(t)).await?;
    }
    tx.batch_execute("DROP SCHEMA IF EXISTS smartcache CASCADE")
        .await?;
    tx.commit().await?;
    Ok(pending)
}

/// Differences between what is installed and what the config asks for;
/// empty when they match.
pub fn drift(installed: &Installed, tables: &[ResolvedTable], channel: &str) -> Vec<String> {
    let mut out = Vec::new();
    match installed.version {
        None => {
            out.push("smartcache is not installed in this database".to_owned());
            return out;
        }
        Some(v) if v != SCHEMA_VERSION => out.push(format!(
            "installed schema version is {v}, this binary expects {SCHEMA_VERSION}"
        )),
        Some(_) => {}
    }
    if installed.channel.as_deref() != Some(channel) {
        out.push(format!(
            "doorbell channel is {:?}, config says {channel:?}",
            installed.channel
        ));
    }
    for t in tables {
        let name = capture_function_name(&t.spec.name);
        match installed.functions.get(&name) {
            None => out.push(format!("capture function smartcache.{name} missing")),
            Some(body) if *body != capture_function_body(t) => out.push(format!(
                "capture function smartcache.{name} does not capture what the config needs"
            )),
            Some(_) => {}
        }
    }
    let want = desired_triggers(tables);
    for w in &want {
        match installed
            .triggers
            .iter()
            .find(|h| h.table == w.table && h.name == w.name)
        {
            None => out.push(format!(
                "trigger {} missing on {}.{}",
                w.name, w.table.0, w.table.1
            )),
            Some(h) if h.function != w.function => out.push(format!(
                "trigger {} on {}.{} calls smartcache.{}, expected smartcache.{}",
                w.name, w.table.0, w.table.1, h.function, w.function
            )),
            Some(_) => {}
        }
    }
    for h in &installed.triggers {
        if !want.iter().any(|w| w.table == h.table && w.name == h.name) {
            out.push(format!(
                "trigger {} on {}.{} is installed but the table is not configured",
                h.name, h.table.0, h.table.1
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_function_names_fit_postgres_identifiers() {
        let short = TableName::new("public", "products");
        assert_eq!(capture_function_name(&short), "capture:public.products");
        let a = TableName::new("s".repeat(40), "t".repeat(40));
        let b = TableName::new("s".repeat(40), format!("{}x", "t".repeat(39)));
        assert!(capture_function_name(&a).len() <= 63);
        assert_ne!(capture_function_name(&a), capture_function_name(&b));
        let wide = TableName::new("é".repeat(31), "ü".repeat(31));
        assert!(capture_function_name(&wide).len() <= 63);
    }
}
