"""Markdown tables for asset and check metadata: one format wherever the UI shows rows."""

from collections.abc import Iterable, Mapping, Sequence


def md_cell(value) -> str:
    """One value as table text: timestamps in ISO 8601 (UTC as `Z`), floats exactly, `-` for none."""
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return repr(float(value))  # float(): a numpy float's repr would name its type
    return str(value).replace("|", "\\|")  # a pipe would end the cell


def md_table(rows: Iterable[Mapping], columns: Sequence[str]) -> str:
    """`rows` as a markdown table of `columns` (a column a row lacks shows `-`); `_none_` for no rows."""
    rows = list(rows)
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
