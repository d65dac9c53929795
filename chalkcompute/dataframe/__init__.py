"""DataFrames: run a deployed function over every row of a parquet file or an Arrow table.

    from chalkcompute import DataFrame, F, _

    DataFrame.scan("transactions.parquet").project({
        "transaction_id": _.transaction_id,
        "entities": F.catalog_call("extract_entities", _.memo),
    }).write_parquet("entities.parquet")

``DataFrame`` (chalkcompute.dataframe.frame) is the lazy query, ``_`` (.expr) builds column
expressions, ``F.catalog_call`` (.catalog) calls a deployed function per row; the rows travel as
batch calls, several in flight, and come back in order (.stage).
"""

from chalkcompute.dataframe.catalog import F
from chalkcompute.dataframe.errors import ColumnNotFoundError, RowError
from chalkcompute.dataframe.expr import Expr, _
from chalkcompute.dataframe.frame import DataFrame

__all__ = ["ColumnNotFoundError", "DataFrame", "Expr", "F", "RowError", "_"]
