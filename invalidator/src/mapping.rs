//! From events to the cache keys and dependency sets to invalidate.

use crate::config::Config;
use crate::outbox::{Event, Op, RowImage};
use redis::RedisResult;
use smartcache_core::conn::Conn;
use smartcache_core::keys::{DepId, TableName};
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
}

impl Work {
    /// Adds what `event` invalidates.
    ///
    /// A table that is not (or no longer) configured still invalidates the
    /// library's dependency sets; only its templates are unknown.
    pub fn add(&mut self, config: &Config, event: &Event) {
        if event.table.schema() == "smartcache" && event.table.name() == "canary" {
            let id = event
                .new
                .as_ref()
                .and_then(|n| n.key.as_ref()?.first().cloned()?);
            if let Some(id) = id {
                self.keys.insert(smartcache_core::keys::canary_key(&id));
            }
            return;
        }
        self.deps.insert(event.table.table_dep());
        if event.op == Op::Truncate {
            self.truncated.insert(event.table.clone());
            return;
        }
        for image in [&event.old, &event.new].into_iter().flatten() {
            self.add_row(config, &event.table, image);
        }
    }

    fn add_row(&mut self, config: &Config, table: &TableName, row: &RowImage) {
        if let Some(key) = &row.key {
            let values: Option<Vec<&str>> = key.iter().map(|v| v.as_deref()).collect();
            if let Some(values) = values {
                self.deps.insert(table.row_dep(&values));
            }
        }
        if let Some(spec) = config.table(table) {
            for template in &spec.keys {
                let key = template.render(|c| row.values.get(c).and_then(|v| v.as_deref()));
                if let Some(key) = key {
                    self.keys.insert(key);
                }
            }
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.deps.is_empty() && self.truncated.is_empty()
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
) -> RedisResult<(Vec<String>, Vec<DepId>)> {
    let ns = &config.namespace;
    let mut keys = Vec::new();
    if let Some(spec) = config.table(table) {
        for template in &spec.keys {
            let pattern = ns.match_cache_keys(&template.scan_pattern());
            for redis_key in con.scan_all(&pattern).await? {
                keys.extend(ns.cache_key_of(&redis_key).map(str::to_owned));
            }
            let leases = ns.match_leases(&template.scan_pattern());
            for redis_key in con.scan_all(&leases).await? {
                keys.extend(ns.cache_key_of_lease(&redis_key).map(str::to_owned));
            }
        }
    }
    let deps = con
        .scan_all(&ns.match_row_dep_sets(table))
        .await?
        .iter()
        .filter_map(|k| ns.dep_id_of(k))
        .collect();
    Ok((keys, deps))
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
        Event {
            id: 1,
            table: TableName::parse("products").unwrap(),
            op,
            old,
            new,
        }
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
        );
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
        w.add(&config(), &event(Op::Insert, None, Some(image("2", None))));
        assert!(!w.keys.iter().any(|k| k.starts_with("category:")));
        assert!(w.keys.contains("product:2"));
    }

    #[test]
    fn unconfigured_table_still_invalidates_dependencies() {
        let mut w = Work::default();
        let mut e = event(Op::Delete, Some(image("3", None)), None);
        e.table = TableName::parse("other").unwrap();
        w.add(&config(), &e);
        assert!(w.keys.is_empty());
        assert_eq!(w.deps.len(), 2);
    }
}
