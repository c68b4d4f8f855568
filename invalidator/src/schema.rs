//! Installing, upgrading, inspecting and removing the SQL objects.
//!
//! `install` computes a [`Plan`] from what is in the database and what the
//! config asks for, so running it twice changes nothing the second time and
//! `--dry-run` can print exactly what would run.
//!
//! Capture never fails or slows the writers: the generated functions run
//! with the installer's rights (any role that may write a watched table
//! keeps writing), check that the columns they read still exist with the
//! types they had at install (once per session and after every schema
//! change where event triggers count those changes, once per statement
//! elsewhere; a migration never makes a write fail: when they changed, the
//! rows go whole and the daemon invalidates broadly), and ring the doorbell
//! only while a daemon waits.

use crate::catalog::ResolvedTable;
use crate::config::{Config, ConfigError};
use crate::sql::{ident, literal};
use serde::{Deserialize, Serialize};
use smartcache_core::keys::TableName;
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// The schema version this binary installs.
pub const SCHEMA_VERSION: i32 = 4;

/// Upgrade scripts, applied in order from the installed version + 1.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../sql/001_schema.sql")),
    (2, include_str!("../../sql/002_capture.sql")),
    (3, include_str!("../../sql/003_time_travel.sql")),
    (4, include_str!("../../sql/004_ddl_epoch.sql")),
];

/// The event triggers that count schema changes (sql/004_ddl_epoch.sql):
/// `(name, event, WHEN clause)`.
const DDL_WATCH: [(&str, &str, &str); 2] = [
    (
        "smartcache_ddl",
        "ddl_command_end",
        " WHEN TAG IN ('ALTER TABLE', 'ALTER TYPE', 'ALTER DOMAIN')",
    ),
    ("smartcache_ddl_drop", "sql_drop", ""),
];

/// Name of the row trigger on a partitioned table (inherited by every
/// partition).
pub const ROW_TRIGGER: &str = "smartcache_capture";
/// Names of the statement triggers on a plain table, by operation.
pub const STATEMENT_TRIGGERS: [(&str, Op); 3] = [
    ("smartcache_capture_insert", Op::Insert),
    ("smartcache_capture_update", Op::Update),
    ("smartcache_capture_delete", Op::Delete),
];
/// Name of the TRUNCATE trigger on each watched table and partition.
pub const TRUNCATE_TRIGGER: &str = "smartcache_truncate";

/// Names of the transition tables the statement triggers see.
const OLD_TABLE: &str = "smartcache_old";
const NEW_TABLE: &str = "smartcache_new";

/// Key under which concurrent installs serialise.
const INSTALL_LOCK: i64 = 0x0073_6d63_6163_6865; // "smcache"

/// A row-changing operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

// pg_trigger.tgtype bits.
const TG_ROW: i16 = 1;
const TG_INSERT: i16 = 4;
const TG_DELETE: i16 = 8;
const TG_UPDATE: i16 = 16;
const TG_TRUNCATE: i16 = 32;

/// The statements `install` would run, in order.
#[derive(Debug, Default)]
pub struct Plan {
    /// SQL statements (each may hold several commands).
    pub statements: Vec<String>,
    /// One line per change, for the operator.
    pub summary: Vec<String>,
}

impl Plan {
    fn add(&mut self, sql: String, summary: String) {
        self.statements.push(sql);
        self.summary.push(summary);
    }
}

/// A trigger of ours found in the catalog, or wanted by the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTrigger {
    /// `(schema, table)`.
    pub table: (String, String),
    /// Trigger name.
    pub name: String,
    /// Name of its function in schema `smartcache`.
    pub function: String,
    /// `pg_trigger.tgtype`: row or statement, which operations.
    pub tgtype: i16,
    /// `pg_trigger.tgenabled`: `O` (origin and local sessions), `A`
    /// (always, replica sessions too), `R` (replica only), `D` (disabled).
    pub enabled: String,
    /// Transition tables `(old, new)` of a statement trigger.
    pub transition: (Option<String>, Option<String>),
}

impl InstalledTrigger {
    fn same_definition(&self, other: &Self) -> bool {
        self.function == other.function
            && self.tgtype == other.tgtype
            && self.transition == other.transition
    }

    fn on(&self) -> String {
        format!("{}.{}", self.table.0, self.table.1)
    }
}

/// What install recorded about a table, as a comment on its capture
/// function: the daemon compares it with the live catalog to tell which
/// columns a migration renamed, dropped or retyped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// The configured table.
    pub table: String,
    /// Captured columns with their type at install: the primary key first.
    pub columns: Vec<CapturedColumn>,
    /// How many of `columns` form the primary key.
    pub npk: usize,
    /// Whether the table was partitioned.
    pub partitioned: bool,
    /// Its partitions at install.
    pub partitions: Vec<(String, String)>,
}

/// One captured column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedColumn {
    /// Column name.
    pub name: String,
    /// Schema-qualified type name.
    pub r#type: String,
    /// Type modifier.
    pub typmod: i32,
    /// The type as people write it.
    pub display: String,
}

impl Captured {
    fn of(t: &ResolvedTable) -> Self {
        let column = |c: &String| {
            let ty = &t.types[c];
            CapturedColumn {
                name: c.clone(),
                r#type: ty.name.clone(),
                typmod: ty.typmod,
                display: ty.display.clone(),
            }
        };
        Self {
            table: t.spec.name.to_string(),
            columns: t.captured().map(column).collect(),
            npk: t.pk.len(),
            partitioned: t.partitioned,
            partitions: t.partitions.clone(),
        }
    }
}

/// A generated capture function as installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledFunction {
    /// Body, security and settings, compared with what install would write.
    pub definition: String,
    /// What install recorded (from its comment), if readable.
    pub captured: Option<Captured>,
}

/// What is installed now.
#[derive(Debug, Default)]
pub struct Installed {
    /// Schema version, `None` when not installed.
    pub version: Option<i32>,
    /// Doorbell channel stored in `smartcache.wakeup`.
    pub channel: Option<String>,
    /// Our triggers on any table (not the copies partitions inherit).
    pub triggers: Vec<InstalledTrigger>,
    /// Copies of our row triggers on partitions: `((schema, table), name, enabled)`.
    pub inherited: Vec<((String, String), String, String)>,
    /// Generated capture functions by name.
    pub functions: BTreeMap<String, InstalledFunction>,
    /// Whether our event triggers are installed and fire in every session
    /// (`ENABLE ALWAYS`), so capture may check its columns once per session.
    pub ddl_watch: bool,
    /// Whether the connected role may create event triggers (probed by
    /// [`install_plan`] only).
    pub can_watch_ddl: bool,
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
            "SELECT tn.nspname::text, c.relname::text, t.tgname::text, p.proname::text, \
                    t.tgtype, t.tgenabled::text, t.tgoldtable::text, t.tgnewtable::text, \
                    t.tgparentid <> 0 \
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
        let table = (r.get(0), r.get(1));
        if r.get::<_, bool>(8) {
            installed.inherited.push((table, r.get(2), r.get(5)));
            continue;
        }
        installed.triggers.push(InstalledTrigger {
            table,
            name: r.get(2),
            function: r.get(3),
            tgtype: r.get(4),
            enabled: r.get(5),
            transition: (r.get(6), r.get(7)),
        });
    }
    let rows = client
        .query(
            "SELECT p.proname::text, p.prosrc, p.prosecdef, coalesce(p.proconfig, '{}'), \
                    obj_description(p.oid, 'pg_proc') \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'smartcache' AND starts_with(p.proname, $1)",
            &[&CAPTURE_PREFIX],
        )
        .await?;
    let watching: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE e.evtname = ANY($1) AND n.nspname = 'smartcache' AND p.proname = 'note_ddl' \
               AND e.evtenabled = 'A'",
            &[&DDL_WATCH.map(|(name, _, _)| name).to_vec()],
        )
        .await?
        .get(0);
    installed.ddl_watch = watching == DDL_WATCH.len() as i64;
    for r in rows {
        let config: Vec<String> = r.get(3);
        let comment: Option<String> = r.get(4);
        installed.functions.insert(
            r.get(0),
            InstalledFunction {
                definition: definition(r.get(1), r.get(2), &config),
                captured: comment.and_then(|c| serde_json::from_str(&c).ok()),
            },
        );
    }
    Ok(installed)
}

/// What makes two capture functions the same: body, rights and settings.
fn definition(body: &str, security_definer: bool, config: &[String]) -> String {
    format!("{body}\n-- security definer: {security_definer}; set {config:?}")
}

/// Settings of a capture function. None for most tables: a `SET` clause
/// costs every write statement a GUC save and restore (~1.5 µs per setting,
/// measured inside one backend; see BENCHMARKS.md), so the body names every
/// function, operator and type with its schema instead of pinning
/// `search_path`, and `TimeZone` is pinned to UTC only when a captured
/// column renders differently in another zone (a `timestamptz` key must
/// render the same whatever the writer's time zone).
fn function_settings(t: &ResolvedTable) -> Vec<String> {
    let zoned = t
        .captured()
        .any(|c| !ZONE_FREE_TYPES.contains(&t.types[c].name.replace('"', "").as_str()));
    if zoned {
        vec!["TimeZone=UTC".to_owned()]
    } else {
        Vec::new()
    }
}

/// Types whose JSON rendering does not depend on the session's time zone.
const ZONE_FREE_TYPES: &[&str] = &[
    "pg_catalog.int2",
    "pg_catalog.int4",
    "pg_catalog.int8",
    "pg_catalog.numeric",
    "pg_catalog.float4",
    "pg_catalog.float8",
    "pg_catalog.text",
    "pg_catalog.varchar",
    "pg_catalog.bpchar",
    "pg_catalog.name",
    "pg_catalog.char",
    "pg_catalog.uuid",
    "pg_catalog.bool",
    "pg_catalog.date",
    "pg_catalog.timestamp",
    "pg_catalog.oid",
];

/// The session setting in which the capture function of `table` remembers
/// the schema-change epoch at which its columns were last found intact.
///
/// ```
/// use smartcache_core::keys::TableName;
/// use smartcache_invalidator::schema::checked_setting;
/// let s = checked_setting(&TableName::parse("public.products").unwrap());
/// assert!(s.starts_with("smartcache.checked_"));
/// ```
pub fn checked_setting(table: &TableName) -> String {
    format!(
        "smartcache.checked_{:016x}",
        fnv1a(capture_function_name(table).as_bytes())
    )
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

/// `'{a,b}'::text[]` for names (quoted array elements, so any name works).
fn text_array(items: impl IntoIterator<Item = String>, ty: &str) -> String {
    let elems: Vec<String> = items
        .into_iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{}::{ty}[]", literal(&format!("{{{}}}", elems.join(","))))
}

/// The longest doorbell payload: PostgreSQL refuses one of 8,000 bytes or
/// more, and a refused NOTIFY would fail the writer's transaction.
const PAYLOAD_MAX: usize = 7999;

/// Body of the generated capture function of a table.
///
/// Per statement (per row on a partitioned table, whose partitions inherit
/// a row trigger): one catalog lookup checks that the captured columns
/// still exist with their install-time types; with `once_per_session`
/// (our event triggers count schema changes, see sql/004_ddl_epoch.sql)
/// only until it passes, and again after any schema change. If so, the primary key and
/// template columns of every changed row go into one outbox row, as JSON
/// arrays in the order of `cols`; if not, the rows go whole and `broken`
/// names the columns that changed, so a migration never fails a write.
/// Then the doorbell, only while a daemon's ring lease runs; with
/// `payload` it carries the outbox row just written when that fits in a
/// notification, so an idle daemon deletes its keys without waiting for
/// the claim (see `delivery`), which applies the row again.
///
/// It runs with the installer's rights under the writer's `search_path`
/// (see [`function_settings`]): every function, operator and type is
/// named with its schema, relations too, and the transition tables are
/// found before any relation of the same name.
pub fn capture_function_body(
    t: &ResolvedTable,
    channel: &str,
    once_per_session: bool,
    payload: bool,
) -> String {
    let cols: Vec<&String> = t.captured().collect();
    let names = text_array(cols.iter().map(|c| (*c).clone()), "pg_catalog.name");
    let types = text_array(
        cols.iter().map(|c| t.types[*c].name.clone()),
        "pg_catalog.regtype",
    );
    let typmods = format!(
        "'{{{}}}'::pg_catalog.int4[]",
        cols.iter()
            .map(|c| t.types[*c].typmod.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let cols_literal = text_array(cols.iter().map(|c| (*c).clone()), "pg_catalog.text");
    let (schema, table) = (literal(t.spec.name.schema()), literal(t.spec.name.name()));
    // An empty statement (an UPDATE that matched nothing) writes no row;
    // the guard is part of the INSERT, one plan less per statement.
    let insert = |op: char, old: &str, new: &str, broken: &str, guard: Option<&str>| {
        let (start, end) = match guard {
            Some(tt) => ("SELECT", format!(" WHERE EXISTS (SELECT FROM {tt})")),
            None => ("VALUES (", ")".to_owned()),
        };
        format!(
            "INSERT INTO smartcache.outbox (table_schema, table_name, op, cols, npk, broken, old_rows, new_rows, created_at)\n            \
             {start} {schema}, {table}, '{op}', {cols_literal}, {npk}, {broken}, {old}, {new}, pg_catalog.clock_timestamp(){end};",
            npk = t.pk.len(),
        )
    };
    let values = |rec: &str| {
        let parts: Vec<String> = cols.iter().map(|c| format!("{rec}.{}", ident(c))).collect();
        format!("pg_catalog.jsonb_build_array({})", parts.join(", "))
    };
    let (exact, whole) = if t.partitioned {
        let row = |rec: &str| format!("pg_catalog.jsonb_build_array({})", values(rec));
        let whole = |rec: &str| format!("pg_catalog.jsonb_build_array(pg_catalog.to_jsonb({rec}))");
        (
            [
                insert('I', "NULL", &row("NEW"), "NULL", None),
                insert('U', &row("OLD"), &row("NEW"), "NULL", None),
                insert('D', &row("OLD"), "NULL", "NULL", None),
            ],
            [
                insert('I', "NULL", &whole("NEW"), "broken", None),
                insert('U', &whole("OLD"), &whole("NEW"), "broken", None),
                insert('D', &whole("OLD"), "NULL", "broken", None),
            ],
        )
    } else {
        let agg =
            |tt: &str, expr: &str| format!("(SELECT pg_catalog.jsonb_agg({expr}) FROM {tt} r)");
        let rows = |tt: &str| agg(tt, &values("r"));
        let whole = |tt: &str| agg(tt, "pg_catalog.to_jsonb(r)");
        let (new, old) = (Some(NEW_TABLE), Some(OLD_TABLE));
        (
            [
                insert('I', "NULL", &rows(NEW_TABLE), "NULL", new),
                insert('U', &rows(OLD_TABLE), &rows(NEW_TABLE), "NULL", new),
                insert('D', &rows(OLD_TABLE), "NULL", "NULL", old),
            ],
            [
                insert('I', "NULL", &whole(NEW_TABLE), "broken", new),
                insert('U', &whole(OLD_TABLE), &whole(NEW_TABLE), "broken", new),
                insert('D', &whole(OLD_TABLE), "NULL", "broken", old),
            ],
        )
    };
    let by_op = |branches: &[String; 3]| {
        format!(
            "IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN\n            {}\n        ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN\n            {}\n        ELSE\n            {}\n        END IF;",
            branches[0], branches[1], branches[2]
        )
    };
    let lookup = format!(
        "SELECT pg_catalog.array_agg(c.name) INTO broken\n        \
FROM ROWS FROM (pg_catalog.unnest({names}), pg_catalog.unnest({types}), pg_catalog.unnest({typmods}))\n             AS c(name, typ, typmod)\n        \
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID\n                          AND a.attname OPERATOR(pg_catalog.=) c.name\n                          \
AND a.atttypid OPERATOR(pg_catalog.=) c.typ::pg_catalog.oid\n                          AND a.atttypmod OPERATOR(pg_catalog.=) c.typmod AND NOT a.attisdropped);"
    );
    // The epoch is read before the lookup: a change counted after it
    // makes the next statement look again.
    let check = if once_per_session {
        let setting = literal(&checked_setting(&t.spec.name));
        format!(
            "epoch := pg_catalog.pg_sequence_last_value('smartcache.ddl_epoch'::pg_catalog.regclass)::pg_catalog.text;\n        \
IF (pg_catalog.current_setting({setting}, true) OPERATOR(pg_catalog.=) epoch) IS NOT TRUE THEN\n        \
{lookup}\n        \
IF broken IS NULL THEN\n            \
PERFORM pg_catalog.set_config({setting}, epoch, false);\n        \
END IF;\n        \
END IF;"
        )
    } else {
        lookup
    };
    // FOUND is the INSERT's: this statement wrote the row `currval` names.
    let ring = if payload {
        format!(
            "IF FOUND THEN\n            \
SELECT pg_catalog.to_jsonb(o)::pg_catalog.text INTO payload FROM smartcache.outbox o\n            \
WHERE o.id OPERATOR(pg_catalog.=) pg_catalog.currval('smartcache.outbox_id_seq'::pg_catalog.regclass);\n        \
END IF;\n        \
PERFORM pg_catalog.pg_notify({channel}, CASE WHEN pg_catalog.octet_length(payload) OPERATOR(pg_catalog.<=) {PAYLOAD_MAX} THEN payload ELSE '' END);",
            channel = literal(channel),
        )
    } else {
        format!("PERFORM pg_catalog.pg_notify({}, '');", literal(channel))
    };
    format!(
        "\n-- generated by smartcache-invalidator install for {name}\n\
DECLARE\n    broken pg_catalog.text[];\n    epoch pg_catalog.text;\n{declare_payload}\
BEGIN\n    \
IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN\n        \
INSERT INTO smartcache.outbox (table_schema, table_name, op, created_at)\n        \
VALUES ({schema}, {table}, 'T', pg_catalog.clock_timestamp());\n    \
ELSE\n        \
{check}\n        \
IF broken IS NULL THEN\n        \
{exact}\n        \
ELSE\n        \
{whole}\n        \
END IF;\n    \
END IF;\n    \
IF pg_catalog.pg_sequence_last_value('smartcache.doorbell'::pg_catalog.regclass) OPERATOR(pg_catalog.>)\n       (extract(epoch FROM pg_catalog.statement_timestamp()) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8 THEN\n        \
{ring}\n    \
END IF;\n    \
RETURN NULL;\n\
END\n",
        name = t.spec.name,
        declare_payload = if payload { "    payload pg_catalog.text;\n" } else { "" },
        exact = by_op(&exact),
        whole = by_op(&whole),
    )
}

fn create_function(name: &str, body: &str, captured: &Captured, settings: &[String]) -> String {
    let settings: Vec<String> = settings
        .iter()
        .map(|s| {
            let (k, v) = s.split_once('=').expect("name=value");
            format!(" SET {k} = {}", literal(v))
        })
        .collect();
    let f = format!("smartcache.{}()", ident(name));
    format!(
        "CREATE OR REPLACE FUNCTION {f} RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER{} AS $fn${body}$fn$;\n\
         REVOKE ALL ON FUNCTION {f} FROM PUBLIC;\n\
         COMMENT ON FUNCTION {f} IS {}",
        settings.concat(),
        literal(&serde_json::to_string(captured).expect("serialisable"))
    )
}

/// The triggers the config asks for.
pub fn desired_triggers(tables: &[ResolvedTable], config: &Config) -> Vec<InstalledTrigger> {
    let enabled = if config.capture_in_replica_mode {
        "A"
    } else {
        "O"
    };
    let mut out = Vec::new();
    for t in tables {
        let table = (
            t.spec.name.schema().to_owned(),
            t.spec.name.name().to_owned(),
        );
        let function = capture_function_name(&t.spec.name);
        let trigger = |table: &(String, String), name: &str, tgtype, transition| InstalledTrigger {
            table: table.clone(),
            name: name.to_owned(),
            function: function.clone(),
            tgtype,
            enabled: enabled.to_owned(),
            transition,
        };
        if t.partitioned {
            out.push(trigger(
                &table,
                ROW_TRIGGER,
                TG_ROW | TG_INSERT | TG_UPDATE | TG_DELETE,
                (None, None),
            ));
            for p in &t.partitions {
                out.push(trigger(p, TRUNCATE_TRIGGER, TG_TRUNCATE, (None, None)));
            }
        } else {
            for (name, op) in STATEMENT_TRIGGERS {
                let (tgtype, transition) = match op {
                    Op::Insert => (TG_INSERT, (None, Some(NEW_TABLE.to_owned()))),
                    Op::Update => (
                        TG_UPDATE,
                        (Some(OLD_TABLE.to_owned()), Some(NEW_TABLE.to_owned())),
                    ),
                    Op::Delete => (TG_DELETE, (Some(OLD_TABLE.to_owned()), None)),
                };
                out.push(trigger(&table, name, tgtype, transition));
            }
        }
        out.push(trigger(&table, TRUNCATE_TRIGGER, TG_TRUNCATE, (None, None)));
    }
    out.sort_by(|a, b| (&a.table, &a.name).cmp(&(&b.table, &b.name)));
    out
}

fn table_sql(table: &(String, String)) -> String {
    format!("{}.{}", ident(&table.0), ident(&table.1))
}

fn create_trigger(t: &InstalledTrigger) -> String {
    let mut events = Vec::new();
    for (bit, name) in [
        (TG_INSERT, "INSERT"),
        (TG_UPDATE, "UPDATE"),
        (TG_DELETE, "DELETE"),
        (TG_TRUNCATE, "TRUNCATE"),
    ] {
        if t.tgtype & bit != 0 {
            events.push(name);
        }
    }
    let mut referencing = String::new();
    if let Some(old) = &t.transition.0 {
        referencing += &format!(" OLD TABLE AS {}", ident(old));
    }
    if let Some(new) = &t.transition.1 {
        referencing += &format!(" NEW TABLE AS {}", ident(new));
    }
    if !referencing.is_empty() {
        referencing = format!(" REFERENCING{referencing}");
    }
    let each = if t.tgtype & TG_ROW != 0 {
        "ROW"
    } else {
        "STATEMENT"
    };
    let mut sql = format!(
        "CREATE TRIGGER {} AFTER {} ON {}{referencing} FOR EACH {each} EXECUTE FUNCTION smartcache.{}()",
        ident(&t.name),
        events.join(" OR "),
        table_sql(&t.table),
        ident(&t.function)
    );
    if t.enabled != "O" {
        sql += &format!(";\n{}", enable_trigger(t));
    }
    sql
}

fn enable_trigger(t: &InstalledTrigger) -> String {
    let how = match t.enabled.as_str() {
        "A" => "ENABLE ALWAYS",
        "R" => "ENABLE REPLICA",
        "D" => "DISABLE",
        _ => "ENABLE",
    };
    format!(
        "ALTER TABLE {} {how} TRIGGER {}",
        table_sql(&t.table),
        ident(&t.name)
    )
}

fn drop_trigger(t: &InstalledTrigger) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {}",
        ident(&t.name),
        table_sql(&t.table)
    )
}

/// The names of the event triggers that count schema changes.
fn ddl_watch_names() -> String {
    DDL_WATCH.map(|(name, _, _)| name).join(", ")
}

/// Creates (or repairs) the event triggers that count schema changes.
fn watch_ddl() -> String {
    DDL_WATCH
        .iter()
        .map(|(name, event, when)| {
            format!(
                "DROP EVENT TRIGGER IF EXISTS {name};\n\
                 CREATE EVENT TRIGGER {name} ON {event}{when} EXECUTE FUNCTION smartcache.note_ddl();\n\
                 ALTER EVENT TRIGGER {name} ENABLE ALWAYS;\n"
            )
        })
        .collect()
}

/// Whether the connected role may create event triggers (superusers, and
/// on some managed services their stand-ins): tried, then rolled back.
async fn may_create_event_triggers(client: &Client) -> Result<bool, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let tried = client
        .batch_execute(
            "CREATE FUNCTION pg_temp.smartcache_probe() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END';\n\
             CREATE EVENT TRIGGER smartcache_probe ON ddl_command_end EXECUTE FUNCTION pg_temp.smartcache_probe()",
        )
        .await;
    client.batch_execute("ROLLBACK").await?;
    match tried {
        Ok(()) => Ok(true),
        Err(e) if e.code().is_some() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Computes what `install` must do to reach the config.
pub fn plan_install(
    installed: &Installed,
    tables: &[ResolvedTable],
    config: &Config,
    grants: &[String],
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
        plan.add(
            (*sql).to_owned(),
            format!("apply schema version {version} (sql/00{version}_*.sql)"),
        );
    }
    if from < SCHEMA_VERSION {
        plan.statements.push(format!(
            "INSERT INTO smartcache.version (schema_version) VALUES ({SCHEMA_VERSION}) \
             ON CONFLICT (singleton) DO UPDATE SET schema_version = EXCLUDED.schema_version"
        ));
    }
    let channel = &config.channel;
    if installed.channel.as_deref() != Some(channel) {
        plan.add(
            format!(
                "INSERT INTO smartcache.wakeup (channel) VALUES ({}) \
                 ON CONFLICT (singleton) DO UPDATE SET channel = EXCLUDED.channel",
                literal(channel)
            ),
            format!("set doorbell channel to {channel:?}"),
        );
    }
    let once_per_session = installed.ddl_watch || installed.can_watch_ddl;
    if once_per_session && !installed.ddl_watch {
        plan.add(
            watch_ddl(),
            format!(
                "count schema changes (event triggers {}), so capture checks its columns once per session",
                ddl_watch_names()
            ),
        );
    }
    for t in tables {
        let name = capture_function_name(&t.spec.name);
        let body = capture_function_body(t, channel, once_per_session, config.doorbell_payload);
        let captured = Captured::of(t);
        let settings = function_settings(t);
        let want = InstalledFunction {
            definition: definition(&body, true, &settings),
            captured: Some(captured.clone()),
        };
        if installed.functions.get(&name) != Some(&want) {
            plan.add(
                create_function(&name, &body, &captured, &settings),
                format!("write capture function smartcache.{name}"),
            );
        }
    }
    let want = desired_triggers(tables, config);
    for t in &installed.triggers {
        if !want.iter().any(|w| w.table == t.table && w.name == t.name) {
            plan.add(
                drop_trigger(t),
                format!(
                    "remove trigger {} from {} (no longer configured)",
                    t.name,
                    t.on()
                ),
            );
        }
    }
    for w in &want {
        match installed
            .triggers
            .iter()
            .find(|h| h.table == w.table && h.name == w.name)
        {
            Some(h) if h.same_definition(w) && h.enabled == w.enabled => {}
            Some(h) if h.same_definition(w) => plan.add(
                enable_trigger(w),
                format!(
                    "set trigger {} on {} to enabled={}",
                    w.name,
                    w.on(),
                    w.enabled
                ),
            ),
            Some(_) => plan.add(
                format!("{};\n{}", drop_trigger(w), create_trigger(w)),
                format!("update trigger {} on {}", w.name, w.on()),
            ),
            None => plan.add(
                create_trigger(w),
                format!("add trigger {} to {}", w.name, w.on()),
            ),
        }
    }
    // Partitions inherit the row trigger; one switched off by hand is
    // switched back, like its parent's.
    for (table, name, enabled) in &installed.inherited {
        let parent_wants = want
            .iter()
            .any(|w| w.name == *name && w.tgtype & TG_ROW != 0);
        let wanted = if config.capture_in_replica_mode {
            "A"
        } else {
            "O"
        };
        if parent_wants && enabled != wanted {
            let t = InstalledTrigger {
                table: table.clone(),
                name: name.clone(),
                function: String::new(),
                tgtype: TG_ROW,
                enabled: wanted.to_owned(),
                transition: (None, None),
            };
            plan.add(
                enable_trigger(&t),
                format!(
                    "set inherited trigger {name} on {} to enabled={wanted}",
                    t.on()
                ),
            );
        }
    }
    for name in installed.functions.keys() {
        if !want.iter().any(|w| &w.function == name) {
            plan.add(
                format!("DROP FUNCTION IF EXISTS smartcache.{}()", ident(name)),
                format!("remove capture function smartcache.{name}"),
            );
        }
    }
    for g in grants {
        plan.add(g.clone(), format!("grant: {g}"));
    }
    Ok(plan)
}

/// Privileges of the daemon's role (`daemon_role`): what `run` needs and
/// nothing more. `check`, `keys` and `clear` need less (see the README).
const DAEMON_GRANTS: &[(&str, &str, &str)] = &[
    ("SCHEMA", "smartcache", "USAGE"),
    // FOR UPDATE (the claim) needs UPDATE as well as SELECT.
    ("TABLE", "smartcache.outbox", "SELECT, UPDATE, DELETE"),
    ("TABLE", "smartcache.version", "SELECT"),
    ("TABLE", "smartcache.wakeup", "SELECT"),
    (
        "TABLE",
        "smartcache.canary",
        "SELECT, INSERT, UPDATE, DELETE",
    ),
    ("TABLE", "smartcache.dead_letter", "SELECT, INSERT"),
    ("TABLE", "smartcache.redis_gen", "SELECT, INSERT, UPDATE"),
    ("SEQUENCE", "smartcache.doorbell", "SELECT, UPDATE"),
    ("SEQUENCE", "smartcache.outbox_id_seq", "SELECT"),
];

/// The GRANT statements `role` still lacks (all of them before the schema
/// exists).
pub async fn missing_grants(
    client: &Client,
    role: &str,
    installed: bool,
) -> anyhow::Result<Vec<String>> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await?
        .get(0);
    if !exists {
        return Err(ConfigError(format!(
            "setting `daemon_role`: role {role:?} does not exist; create it (CREATE ROLE {} LOGIN) or unset the setting",
            ident(role)
        ))
        .into());
    }
    let mut out = Vec::new();
    for (kind, object, privileges) in DAEMON_GRANTS {
        let mut has = installed;
        for p in privileges.split(", ") {
            if !has {
                break;
            }
            let sql = match *kind {
                "SCHEMA" => "SELECT has_schema_privilege($1, $2, $3)",
                "SEQUENCE" => "SELECT has_sequence_privilege($1, $2, $3)",
                _ => "SELECT has_table_privilege($1, $2, $3)",
            };
            has = client
                .query_one(sql, &[&role, object, &p])
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false);
        }
        if !has {
            out.push(format!(
                "GRANT {privileges} ON {kind} {object} TO {}",
                ident(role)
            ));
        }
    }
    Ok(out)
}

/// Checks that the connected role may run `plan`; names the privilege it
/// lacks otherwise, before anything is changed.
pub async fn check_privileges(
    client: &Client,
    installed: &Installed,
    tables: &[ResolvedTable],
    plan: &Plan,
) -> anyhow::Result<()> {
    if plan.statements.is_empty() {
        return Ok(());
    }
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    if installed.version.is_none() {
        let row = client
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE'), \
                        (SELECT pg_has_role(current_user, nspowner, 'MEMBER') FROM pg_namespace WHERE nspname = 'smartcache')",
                &[],
            )
            .await?;
        let (create, owner): (bool, Option<bool>) = (row.get(0), row.get(1));
        if owner == Some(false) || (owner.is_none() && !create) {
            return Err(ConfigError(format!(
                "install needs the CREATE privilege on this database to create schema smartcache; role {who:?} lacks it \
                 (GRANT CREATE ON DATABASE … TO {}, or run install as the database owner)",
                ident(&who)
            ))
            .into());
        }
    } else {
        let owner: bool = client
            .query_one(
                "SELECT pg_has_role(current_user, nspowner, 'MEMBER') FROM pg_namespace WHERE nspname = 'smartcache'",
                &[],
            )
            .await?
            .get(0);
        if !owner {
            return Err(ConfigError(format!(
                "schema smartcache belongs to another role; role {who:?} cannot replace its functions: \
                 run install as the role that installed it"
            ))
            .into());
        }
    }
    for t in tables {
        let mut relations = vec![(
            t.spec.name.schema().to_owned(),
            t.spec.name.name().to_owned(),
        )];
        relations.extend(t.partitions.iter().cloned());
        for (schema, name) in relations {
            let qualified = format!("{}.{}", ident(&schema), ident(&name));
            let owner: bool = client
                .query_one(
                    "SELECT pg_has_role(current_user, c.relowner, 'MEMBER') FROM pg_class c \
                     WHERE c.oid = $1::text::regclass",
                    &[&qualified],
                )
                .await?
                .get(0);
            if !owner {
                return Err(ConfigError(format!(
                    "install must own table {schema}.{name} (or be a member of its owner role) to create, replace \
                     and enable its triggers; role {who:?} does not: run install as the table's owner"
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Resolves the config against the database and plans the install,
/// after checking the connected role may carry it out.
pub async fn install_plan(client: &Client, config: &Config) -> anyhow::Result<Plan> {
    let tables = crate::catalog::resolve(client, config).await?;
    for t in tables.iter().filter(|t| t.pk.is_empty()) {
        tracing::warn!(table = %t.spec.name, "table has no primary key: row dependencies cannot be tracked, only the table and its key templates");
    }
    let mut installed = inspect(client).await?;
    if !installed.ddl_watch {
        installed.can_watch_ddl = may_create_event_triggers(client).await?;
    }
    let grants = match &config.daemon_role {
        Some(role) => {
            missing_grants(client, role, installed.version == Some(SCHEMA_VERSION)).await?
        }
        None => Vec::new(),
    };
    let plan = plan_install(&installed, &tables, config, &grants)?;
    check_privileges(client, &installed, &tables, &plan).await?;
    Ok(plan)
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
pub fn drift(installed: &Installed, tables: &[ResolvedTable], config: &Config) -> Vec<String> {
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
    let channel = &config.channel;
    if installed.channel.as_deref() != Some(channel) {
        out.push(format!(
            "doorbell channel is {:?}, config says {channel:?}",
            installed.channel
        ));
    }
    for t in tables {
        let name = capture_function_name(&t.spec.name);
        let with = |once, payload| {
            definition(
                &capture_function_body(t, channel, once, payload),
                true,
                &function_settings(t),
            )
        };
        let want = |once| with(once, config.doorbell_payload);
        match installed.functions.get(&name) {
            None => out.push(format!("capture function smartcache.{name} missing")),
            Some(f) if !installed.ddl_watch && f.definition == want(true) => out.push(format!(
                "event triggers {} are missing or not enabled ALWAYS, but capture function smartcache.{name} \
                 checks its columns only once per session: a column renamed or retyped now could go unnoticed \
                 (the writes of sessions that already wrote would fail); run install",
                ddl_watch_names()
            )),
            Some(f) if f.definition == with(installed.ddl_watch, !config.doorbell_payload) => {
                out.push(format!(
                    "capture function smartcache.{name} was installed with doorbell_payload = {}, \
                     the config says {}",
                    !config.doorbell_payload, config.doorbell_payload
                ))
            }
            Some(f) if f.definition != want(installed.ddl_watch) => out.push(format!(
                "capture function smartcache.{name} does not capture what the config needs"
            )),
            Some(_) => {}
        }
    }
    let want = desired_triggers(tables, config);
    for w in &want {
        match installed
            .triggers
            .iter()
            .find(|h| h.table == w.table && h.name == w.name)
        {
            None => out.push(format!("trigger {} missing on {}", w.name, w.on())),
            Some(h) if !h.same_definition(w) => out.push(format!(
                "trigger {} on {} is not the one this version installs",
                w.name,
                w.on()
            )),
            Some(h) if h.enabled != w.enabled => out.push(format!(
                "trigger {} on {} is enabled={}, config wants {}",
                w.name,
                w.on(),
                h.enabled,
                w.enabled
            )),
            Some(_) => {}
        }
    }
    let configured: Vec<String> = config
        .tables
        .iter()
        .map(|t| capture_function_name(&t.name))
        .collect();
    for h in &installed.triggers {
        let known = want.iter().any(|w| w.table == h.table && w.name == h.name)
            || configured.contains(&h.function);
        if !known {
            out.push(format!(
                "trigger {} on {} is installed but the table is not configured",
                h.name,
                h.on()
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

    #[test]
    fn names_in_array_literals_cannot_break_out() {
        assert_eq!(
            text_array(["a\"b".to_owned(), "c'd".to_owned()], "name"),
            r#"E'{"a\\"b","c''d"}'::name[]"#
        );
    }
}
