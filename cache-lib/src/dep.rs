//! What a cache entry depends on: a whole table or one row.

use smartcache_core::keys::{DepId, InvalidName, TableName};

/// A dependency of a cache entry: when the invalidator sees a committed
/// change to it, the entry is deleted.
///
/// Table names are `table` (schema `public`) or `schema.table`, spelled as
/// PostgreSQL stores them (unquoted names are lower case). Row values are
/// the primary-key columns in key order, as text the way PostgreSQL's JSON
/// renders them: integers `42`, numerics `1.50`, uuids lower case with
/// dashes, booleans `true`. `Display` of Rust integers and of
/// `uuid::Uuid` gives exactly that.
///
/// ```
/// use smartcache::Dep;
/// let all = Dep::table("products");
/// let one = Dep::row("products", [42]);
/// let composite = Dep::row("shop.order_lines", ["1001".to_string(), "3".to_string()]);
/// assert_eq!(one.id().unwrap().as_str(), "r:public.products:42");
/// assert_eq!(all.id().unwrap().as_str(), "t:public.products");
/// assert_eq!(composite.id().unwrap().as_str(), "r:shop.order_lines:1001,3");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dep {
    table: String,
    row: Option<Vec<String>>,
}

impl Dep {
    /// Depends on every row of `table` (any INSERT, UPDATE, DELETE or
    /// TRUNCATE).
    ///
    /// ```
    /// let dep = smartcache::Dep::table("shop.products");
    /// assert_eq!(dep.id().unwrap().as_str(), "t:shop.products");
    /// ```
    pub fn table(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            row: None,
        }
    }

    /// Depends on the row of `table` whose primary key is `pk` (one value
    /// per key column, in order).
    ///
    /// ```
    /// let dep = smartcache::Dep::row("products", [7]);
    /// assert_eq!(dep.id().unwrap().as_str(), "r:public.products:7");
    /// ```
    pub fn row<I>(table: impl Into<String>, pk: I) -> Self
    where
        I: IntoIterator,
        I::Item: ToString,
    {
        Self {
            table: table.into(),
            row: Some(pk.into_iter().map(|v| v.to_string()).collect()),
        }
    }

    /// The dependency id stored in Redis, or why the table name is not
    /// usable.
    ///
    /// ```
    /// assert!(smartcache::Dep::table("").id().is_err());
    /// ```
    pub fn id(&self) -> Result<DepId, InvalidName> {
        let table = TableName::parse(&self.table)?;
        Ok(match &self.row {
            None => table.table_dep(),
            Some(pk) if pk.is_empty() => {
                return Err(InvalidName(format!(
                    "row dependency on {table} has no primary-key value; pass one per key column"
                )))
            }
            Some(pk) => table.row_dep(pk),
        })
    }
}

pub(crate) fn dep_ids(deps: &[Dep]) -> Result<Vec<DepId>, InvalidName> {
    let mut ids = deps.iter().map(Dep::id).collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
