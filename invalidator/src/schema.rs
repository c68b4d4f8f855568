//! Installing, upgrading, inspecting and removing the SQL objects.
//!
//! `install` computes a [`Plan`] from what is in the database and what the
//! config asks for, so running it twice changes nothing the second time and
//! `--dry-run` can print exactly what would run.

use crate::catalog::ResolvedTable;
use crate::sql::{ident, literal};
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
    /// Trigger arguments.
    pub args: Vec<String>,
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
}

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
            "SELECT tn.nspname::text, c.relname::text, t.tgname::text, t.tgnargs::int, t.tgargs \
             FROM pg_trigger t \
             JOIN pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_namespace pn ON pn.oid = p.pronamespace \
             JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace tn ON tn.oid = c.relnamespace \
             WHERE pn.nspname = 'smartcache' AND NOT t.tgisinternal \
             ORDER BY 1, 2, 3",
            &[],
        )
        .await?;
    for r in rows {
        let nargs: i32 = r.get(3);
        let raw: Vec<u8> = r.get(4);
        let args = raw
            .split(|b| *b == 0)
            .take(nargs as usize)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        installed.triggers.push(InstalledTrigger {
            table: (r.get(0), r.get(1)),
            name: r.get(2),
            args,
        });
    }
    Ok(installed)
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
            args: t.trigger_args(),
        });
        out.push(InstalledTrigger {
            table,
            name: TRUNCATE_TRIGGER.to_owned(),
            args: Vec::new(),
        });
    }
    out.sort_by(|a, b| (&a.table, &a.name).cmp(&(&b.table, &b.name)));
    out
}

fn create_trigger(t: &InstalledTrigger) -> String {
    let table = format!("{}.{}", ident(&t.table.0), ident(&t.table.1));
    let args: Vec<String> = t.args.iter().map(|a| literal(a)).collect();
    if t.name == TRUNCATE_TRIGGER {
        format!(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {table} FOR EACH STATEMENT \
             EXECUTE FUNCTION smartcache.capture_truncate()",
            ident(&t.name)
        )
    } else {
        format!(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW \
             EXECUTE FUNCTION smartcache.capture({})",
            ident(&t.name),
            args.join(", ")
        )
    }
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
    let have: BTreeMap<_, _> = installed
        .triggers
        .iter()
        .map(|t| ((t.table.clone(), t.name.clone()), t))
        .collect();
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
        match have.get(&(w.table.clone(), w.name.clone())) {
            Some(h) if *h == w => {}
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
            Some(h) if h.args != w.args => out.push(format!(
                "trigger {} on {}.{} captures {:?}, config needs {:?}",
                w.name, w.table.0, w.table.1, h.args, w.args
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
