"""``Dep`` with the table named by a Django model."""

from .. import Dep as _Dep


def _table(table):
    if isinstance(table, str):
        return table
    meta = getattr(table, "_meta", None)
    if meta is None:
        raise TypeError(f"expected a table name or a Django model, not {table!r}")
    return meta.db_table


class Dep(_Dep):
    """``smartcache.Dep`` that also takes Django models: the table name
    comes from ``Model._meta.db_table``.

    >>> Dep.model(Product).id
    't:public.shop_product'
    >>> Dep.instance(product).id
    'r:public.shop_product:42'
    >>> Dep.row(Product, 42) == Dep.instance(product)
    True
    """

    @staticmethod
    def table(table):
        """Depends on every row of a table (a name or a model)."""
        return _Dep.table(_table(table))

    @staticmethod
    def row(table, pk):
        """Depends on one row of a table (a name or a model) by primary
        key (a value, or a tuple for a composite key)."""
        return _Dep.row(_table(table), pk)

    @staticmethod
    def model(model):
        """Depends on every row of ``model``'s table."""
        return _Dep.table(_table(model))

    @staticmethod
    def instance(obj):
        """Depends on the row of ``obj`` (its table and primary key). For a
        model with multi-table inheritance this is the child's table; add
        ``Dep.instance`` of the parent link too if parent fields matter."""
        if obj.pk is None:
            raise ValueError(f"{obj!r} has no primary key yet; save it first")
        return _Dep.row(_table(type(obj)), obj.pk)
