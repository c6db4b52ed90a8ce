"""The one MetaData of tidings' tables, and the column shapes several tables share."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import CheckConstraint, Column, DateTime, MetaData, func

# Deterministic constraint names, so the migrations can name (and later drop) each one.
metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    }
)


def timestamp(name: str, *, nullable: bool = False, onupdate: bool = False) -> Column[datetime]:
    """A timestamptz column; a NOT NULL one defaults to the database's ``now()``."""
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else func.now(),
        # Core UPDATEs built from the table refresh it; raw SQL must set it itself.
        onupdate=func.now() if onupdate else None,
    )


def one_of(column: str, values: Iterable[str], *, name: str) -> CheckConstraint:
    """CHECK (column IN (...)) for a closed set of text values."""
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=name)
