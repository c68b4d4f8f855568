//! From events to the cache keys and dependency sets to invalidate.

use crate::config::{Config, Template};
use crate::outbox::{Event, Op, RowImage};
use redis::RedisResult;
use smartcache_core::conn::Conn;
use smartcache_core::keys::{DepId, TableName};
use smartcache_core::registry::scan;
use std::collections::BTreeSet;

/// What one batch must invalidate, deduplicated.
#[derive(Debug, Default)]
pub struct Work {
    /// Cache keys built from templates.
    pub keys: BTreeSet<String>,
    /// Dependency sets registered by the library.
    pub deps: BTreeSet<DepId>,
    /// Truncated tables: every key their templates can produce.
    pub truncated: BTreeSet<TableName>,
    /// Templates that could not be rendered (a migration renamed, dropped
    /// or retyped a column they use): every key they can produce.
    pub unrenderable: BTreeSet<(TableName, String)>,
    /// Tables whose changed rows could not be identified (the primary key
    /// changed): every row dependency set of the table.
    pub all_rows: BTreeSet<TableName>,
}

/// How the rows of one event turn into keys: the templates that can be
/// rendered from them.
#[derive(Debug)]
pub struct Rows<'c> {
    table: TableName,
    templates: Vec<&'c Template>,
    /// The canary's heartbeat: its key, not templates.
    canary: bool,
    /// Rows without a readable primary key invalidate every row of the
    /// table (capture sent whole rows that lack it).
    broken_key: bool,
}

impl Work {
    /// Adds what `event` invalidates, rows included. A row that cannot be
    /// read is an error naming it.
    ///
    /// A table that is not (or no longer) configured still invalidates the
    /// library's dependency sets; only its templates are unknown.
    pub fn add(&mut self, config: &Config, event: &Event) -> Result<(), String> {
        let rows = self.begin(config, event);
        for row in event.rows() {
            self.add_row(&rows, &row?);
        }
        Ok(())
    }

    /// Adds what `event` invalidates as a whole (its table, a truncation,
    /// templates it cannot render); its rows follow with [`Work::add_row`].
    pub fn begin<'c>(&mut self, config: &'c Config, event: &Event) -> Rows<'c> {
        let mut rows = Rows {
            table: event.table.clone(),
            templates: Vec::new(),
            canary: event.table.schema() == "smartcache" && event.table.name() == "canary",
            broken_key: !event.broken.is_empty(),
        };
        if rows.canary {
            return rows;
        }
        self.deps.insert(event.table.table_dep());
        if event.op == Op::Truncate {
            self.truncated.insert(event.table.clone());
            return rows;
        }
        // A template whose columns capture could not read (or did not
        // send: the install and this config disagree) can't be rendered.
        let renderable = |t: &Template| {
            t.columns().all(|c| {
                !event.broken.contains(c)
                    && event.captured.as_ref().is_none_or(|cols| cols.contains(c))
            })
        };
        for t in config
            .table(&event.table)
            .map(|s| &s.keys[..])
            .unwrap_or_default()
        {
            if renderable(t) {
                rows.templates.push(t);
            } else {
                self.unrenderable
                    .insert((event.table.clone(), t.as_str().to_owned()));
            }
        }
        rows
    }

    /// Adds what one changed row invalidates.
    pub fn add_row(&mut self, rows: &Rows<'_>, row: &RowImage) {
        if rows.canary {
            if let Some(id) = row.key.as_ref().and_then(|k| k.first().cloned().flatten()) {
                self.keys.insert(smartcache_core::keys::canary_key(&id));
            }
            return;
        }
        match &row.key {
            Some(key) => {
                let values: Option<Vec<&str>> = key.iter().map(|v| v.as_deref()).collect();
                if let Some(values) = values {
                    self.deps.insert(rows.table.row_dep(&values));
                }
            }
            None if rows.broken_key => {
                self.all_rows.insert(rows.table.clone());
            }
            None => {}
        }
        for template in &rows.templates {
            let key = template.render(|c| row.values.get(c).and_then(|v| v.as_deref()));
            if let Some(key) = key {
                self.keys.insert(key);
            }
        }
    }

    /// Takes the keys and dependency sets gathered so far, leaving what
    /// needs a `SCAN` (truncations, templates that cannot be rendered) for
    /// the last step of the batch.
    pub fn take_rows(&mut self) -> (Vec<String>, Vec<DepId>) {
        (
            std::mem::take(&mut self.keys).into_iter().collect(),
            std::mem::take(&mut self.deps).into_iter().collect(),
        )
    }

    /// Keys and dependency sets gathered so far.
    pub fn len(&self) -> usize {
        self.keys.len() + self.deps.len()
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.deps.is_empty()
            && self.truncated.is_empty()
            && self.unrenderable.is_empty()
            && self.all_rows.is_empty()
    }
}

/// What a TRUNCATE of `table` invalidates, as it exists in Redis now:
/// every cache key its templates can produce (values, and leases of fills
/// in flight, which must be defeated too) and every row dependency set of
/// the table (the table's own set is in the event already).
pub async fn truncation_targets(
    con: &mut Conn,
    config: &Config,
    table: &TableName,
    progress: &(dyn Fn() + Sync),
) -> RedisResult<(Vec<String>, Vec<DepId>)> {
    let templates: Vec<&Template> = config
        .table(table)
        .map(|s| s.keys.iter().collect())
        .unwrap_or_default();
    let keys = template_targets(con, config, &templates, progress).await?;
    let deps = row_dep_targets(con, config, table, progress).await?;
    Ok((keys, deps))
}

/// Every cache key the templates can produce that exists now, found with
/// `SCAN MATCH` (`{…}` as `*`). Leases first: a fill that read before the
/// change and stores between the two scans holds a lease the first scan
/// found, so its store is refused; a fill that takes its lease after it
/// read after the change.
pub async fn template_targets(
    con: &mut Conn,
    config: &Config,
    templates: &[&Template],
    progress: &(dyn Fn() + Sync),
) -> RedisResult<Vec<String>> {
    let ns = &config.namespace;
    let mut keys = Vec::new();
    for template in templates {
        let leases = ns.match_leases(&template.scan_pattern());
        for redis_key in scan(con, &leases, progress).await? {
            keys.extend(ns.cache_key_of_lease(&redis_key).map(str::to_owned));
        }
        let pattern = ns.match_cache_keys(&template.scan_pattern());
        for redis_key in scan(con, &pattern, progress).await? {
            keys.extend(ns.cache_key_of(&redis_key).map(str::to_owned));
        }
    }
    Ok(keys)
}

/// Every row dependency of `table` that has registrants now (row buckets
/// and row dependency sets).
pub async fn row_dep_targets(
    con: &mut Conn,
    config: &Config,
    table: &TableName,
    progress: &(dyn Fn() + Sync),
) -> RedisResult<Vec<DepId>> {
    smartcache_core::registry::row_deps(con, &config.namespace, table, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use crate::outbox::RowValues;
    use std::path::Path;

    fn config() -> Config {
        Config::from_toml(
            "[[tables]]\nname = \"products\"\nkeys = [\"product_list\", \"product:{id}\", \"category:{category_id}\"]\n",
            Path::new("t.toml"),
            &Overrides::default(),
        )
        .unwrap()
    }

    fn image(id: &str, cat: Option<&str>) -> RowImage {
        let mut values = RowValues::new();
        values.insert("id".into(), Some(id.into()));
        values.insert("category_id".into(), cat.map(str::to_owned));
        RowImage {
            key: Some(vec![Some(id.into())]),
            values,
        }
    }

    fn event(op: Op, old: Option<RowImage>, new: Option<RowImage>) -> Event {
        Event::single(
            1,
            TableName::parse("products").unwrap(),
            op,
            old.into_iter().chain(new).collect(),
        )
    }

    #[test]
    fn update_invalidates_old_and_new_category() {
        let mut w = Work::default();
        w.add(
            &config(),
            &event(
                Op::Update,
                Some(image("1", Some("5"))),
                Some(image("1", Some("6"))),
            ),
        )
        .unwrap();
        let keys: Vec<_> = w.keys.iter().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["category:5", "category:6", "product:1", "product_list"]
        );
        assert_eq!(w.deps.len(), 2, "table dep and one row dep: {:?}", w.deps);
    }

    #[test]
    fn null_template_column_produces_no_key() {
        let mut w = Work::default();
        w.add(&config(), &event(Op::Insert, None, Some(image("2", None))))
            .unwrap();
        assert!(!w.keys.iter().any(|k| k.starts_with("category:")));
        assert!(w.keys.contains("product:2"));
    }

    #[test]
    fn unconfigured_table_still_invalidates_dependencies() {
        let mut w = Work::default();
        let mut e = event(Op::Delete, Some(image("3", None)), None);
        e.table = TableName::parse("other").unwrap();
        w.add(&config(), &e).unwrap();
        assert!(w.keys.is_empty());
        assert_eq!(w.deps.len(), 2);
    }

    #[test]
    fn a_broken_column_makes_its_templates_unrenderable_only() {
        let mut w = Work::default();
        let mut e = event(
            Op::Update,
            Some(image("1", Some("5"))),
            Some(image("1", Some("6"))),
        );
        e.broken.insert("category_id".into());
        w.add(&config(), &e).unwrap();
        assert!(w.keys.contains("product:1"), "{:?}", w.keys);
        assert!(!w.keys.iter().any(|k| k.starts_with("category:")));
        let broken: Vec<_> = w.unrenderable.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(broken, ["category:{category_id}"]);
        assert!(w.all_rows.is_empty(), "the primary key was read");
    }

    #[test]
    fn a_template_column_capture_did_not_send_makes_the_template_unrenderable() {
        let mut w = Work::default();
        let mut e = event(Op::Insert, None, Some(image("1", Some("5"))));
        e.captured = Some(["id".to_owned()].into());
        w.add(&config(), &e).unwrap();
        assert!(w.keys.contains("product:1"));
        assert_eq!(w.unrenderable.len(), 1);
    }

    #[test]
    fn a_broken_primary_key_invalidates_every_row_of_the_table() {
        let mut w = Work::default();
        let mut row = image("1", Some("5"));
        row.key = None;
        row.values.remove("id");
        let mut e = event(Op::Insert, None, Some(row));
        e.broken.insert("id".into());
        w.add(&config(), &e).unwrap();
        assert_eq!(w.all_rows.len(), 1);
        assert!(w.unrenderable.iter().any(|(_, t)| t == "product:{id}"));
    }
}
