"""Many instances of one frozen dataclass, made fast or kept as columns.

A frozen dataclass's generated ``__init__`` assigns every field through
``object.__setattr__`` (8 calls for a Confirmation), ~1.5 us an object. A clearing of
10,000 orders makes 20,000 trades and confirmations; the market role then sets two
prices in every confirmation and an id in every trade, each a new object. Here:

* ``adopt``: instances given their whole field dict in one assignment (loops in C);
* ``maker``: a constructor taking the fields positionally that gives each instance its
  dict as one dict display (the decoded messages' and ``Rows``' objects);
* ``Rows``: the rows of a clearing kept as columns, each field a list (or one value for
  every row, ``Same``), read as a sequence of the dataclass's instances, made once on
  first use. Changing a column (a price, an id) is one list, and a message is encoded
  from the columns without any object: the objects are made only where someone reads
  them one by one (the settlement, the ledger, the in-process prosumers).

Every object made here equals the one ``cls(...)`` makes: same type, fields, ``==``,
hash, repr, ``asdict``, ``replace``, pickle. Only for dataclasses without
``__post_init__`` (checked). Plain Python, no I/O.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from itertools import repeat, starmap
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

_new = object.__new__
_set = object.__setattr__


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (if it was on). Building 20k
    result objects otherwise runs ~30 young-generation passes over them, which never
    find a cycle (their fields are strings and numbers): 1-3 ms of a 10k-order clearing.
    The collector catches up after the block."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def adopt(cls: type, dicts: list[dict[str, Any]]) -> list[Any]:
    """Instances of the frozen dataclass ``cls`` with these field dicts (every field,
    nothing else), without ``cls.__init__``: only for classes without __post_init__."""
    assert not hasattr(cls, "__post_init__"), cls
    objs = list(map(_new, repeat(cls, len(dicts))))
    deque(map(_set, objs, repeat("__dict__"), dicts), maxlen=0)
    return objs


_MAKERS: dict[type, Callable[..., Any]] = {}


def maker(cls: type) -> Callable[..., Any]:
    """A constructor of ``cls`` instances taking every field positionally, in field
    order, that skips ``cls.__init__``: an ``object.__new__`` instance given its whole
    ``__dict__`` at once, a dict display (~0.7 us, against ~3 us for a Confirmation's
    ``__init__``); built once per class. Only for dataclasses without ``__post_init__``
    (which this would skip) and without ``__slots__``: ValueError.

    (Measured and rejected: a plain "twin" class whose ``__init__`` stores the fields,
    then ``__class__`` assigned: ~25 % cheaper to make, but CPython 3.11 then holds the
    fields in a split dict of the twin's keys and every later attribute read is ~40 %
    slower; the market's settlement of 10k trades lost more than the making saved.)"""
    made = _MAKERS.get(cls)
    if made is not None:
        return made
    if not hasattr(cls, "__dataclass_fields__") or hasattr(cls, "__post_init__") or "__slots__" in vars(cls):
        raise ValueError(f"maker({cls.__name__}): only for dataclasses without __post_init__ or __slots__")
    names = [f.name for f in fields(cls)]
    src = (f"def make_{cls.__name__}({', '.join(names)}):\n"
           f"    o = NEW(CLS)\n"
           f"    SET(o, '__dict__', {{{', '.join(f'{n!r}: {n}' for n in names)}}})\n"
           f"    return o\n")
    ns: dict[str, Any] = {"CLS": cls, "NEW": _new, "SET": _set}
    exec(src, ns)  # the source is built from the dataclass's field names
    made = _MAKERS[cls] = ns[f"make_{cls.__name__}"]
    return made


@dataclass(frozen=True)
class Same:
    """One value for every row of a ``Rows`` column."""

    value: Any


_NAMES: dict[type, tuple[str, ...]] = {}


def field_names(cls: type) -> tuple[str, ...]:
    """The dataclass ``cls``'s field names in field order."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


class Rows(Sequence[T], Generic[T]):
    """``n`` instances of the frozen dataclass ``cls`` kept as columns (module doc).

    ``columns``: every field of ``cls`` by name, each a sequence of ``n`` values or a
    ``Same``. As a sequence it holds the instances (made once, on the first item read),
    and equals a list (or Rows) of equal instances; ``+`` gives a list; pickled or
    copied it is a list."""

    __slots__ = ("_objects", "cls", "columns", "n")

    def __init__(self, cls: type, n: int, columns: Mapping[str, Sequence[Any] | Same]) -> None:
        names = field_names(cls)
        if set(columns) != set(names):
            raise ValueError(f"{cls.__name__} rows need the columns {list(names)}, "
                             f"not {sorted(columns)}")
        for name, col in columns.items():
            if not isinstance(col, Same) and len(col) != n:
                raise ValueError(f"{cls.__name__} column {name!r} has {len(col)} values, not {n}")
        assert not hasattr(cls, "__post_init__"), cls
        self.cls = cls
        self.n = n
        self.columns = {name: columns[name] for name in names}
        self._objects: list[T] | None = None

    @classmethod
    def of(cls, item_cls: type, items: Sequence[Any]) -> Rows:
        """``items`` (instances of ``item_cls``) as columns; Rows as they are."""
        if isinstance(items, Rows):
            return items
        n = len(items)
        dicts = [i.__dict__ for i in items]
        return cls(item_cls, n, {name: [d[name] for d in dicts] for name in field_names(item_cls)})

    def column(self, name: str) -> Sequence[Any]:
        """Field ``name``'s ``n`` values (a ``Same`` as a list; do not change it)."""
        col = self.columns[name]
        return [col.value] * self.n if isinstance(col, Same) else col

    def with_columns(self, **changes: Sequence[Any] | Same) -> Rows:
        """These rows with the columns ``changes`` replaced (the others shared)."""
        unknown = set(changes) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.cls.__name__} has no fields {sorted(unknown)}")
        return Rows(self.cls, self.n, {**self.columns, **changes})

    def tuples(self) -> Iterator[tuple]:
        """Each row's values in field order (no object made)."""
        cols = [repeat(c.value, self.n) if isinstance(c, Same) else c for c in self.columns.values()]
        return zip(*cols, strict=False) if cols else iter(())

    def objects(self) -> list[T]:
        """The instances (made on the first call, GC paused; the same list after)."""
        if self._objects is None:
            with gc_paused():
                self._objects = list(starmap(maker(self.cls), self.tuples()))
        return self._objects

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        return self.objects()[i]

    def __iter__(self) -> Iterator[T]:
        return iter(self.objects())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rows):
            return self.objects() == other.objects()
        if isinstance(other, list):
            return self.objects() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list

    def __add__(self, other: Sequence[Any]) -> list[Any]:
        return self.objects() + list(other)

    def __radd__(self, other: Sequence[Any]) -> list[Any]:
        return list(other) + self.objects()

    def __repr__(self) -> str:
        return repr(self.objects())

    def __reduce__(self) -> tuple:
        return (list, (self.objects(),))
