"""The errors a DataFrame query raises for a row that a deployed function failed on."""

from __future__ import annotations

from chalkcompute.exceptions import ChalkError, FunctionError

__all__ = ["ColumnNotFoundError", "RowError"]


class RowError(FunctionError, RuntimeError):
    """A row of ``F.catalog_call`` failed: ``row`` is its index (counted over the rows that reach
    the call, after any filter before it), ``error`` the remote error (also ``__cause__``).

    Example::

        try:
            df.to_arrow()
        except RowError as e:
            print(e.row, e.error)   # 17 RemoteExecutionError('ValueError: bad memo')
    """

    def __init__(self, function_name: str, row: int, error: BaseException) -> None:
        super().__init__(f"F.catalog_call({function_name!r}) failed on row {row}: {error}")
        self.function_name, self.row, self.error = function_name, row, error


class ColumnNotFoundError(ChalkError, KeyError):
    """An expression names a column the frame does not have; the message lists the columns there are."""

    def __init__(self, name: str, columns: list[str]) -> None:
        super().__init__(f"no column {name!r}: the columns are {columns}")
        self.name, self.columns = name, columns

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0])
