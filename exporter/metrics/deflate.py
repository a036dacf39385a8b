"""The gzip body of a scrape, joined from deflate pieces compressed soon after polls end: runs
of consecutive projects, each primed with the text just before it in the body."""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from ..store import ProjectState

# Runs compressed after polls end: level 3 takes 60% of the time of level 6 on these runs for
# 4% more bytes, so a poll compresses about what it did when each piece was compressed alone.
# What a scrape compresses itself (lines picked out of pieces, the exporter-wide families, a run
# no poll has compressed yet) at level 1, the fastest.
CACHED_LEVEL = 3
SCRAPE_LEVEL = 1

# One project's piece of a family is small, most under 200 bytes. Compressed alone, each paid a
# deflate block and a flush of its own and could not refer to the same text one project
# before: the gzip body was 3x what one-shot gzip makes of the text. So pieces are compressed
# per run of consecutive projects, each run primed with the piece just before it in the body
# (the last project of the run before). A poll makes its project's run stale, and the next one
# when its piece primes that; they are compressed again (once for all the polls that made them
# stale meanwhile), but only the families whose text changed: a poll that found
# nothing new changes two small gauges. Histograms are large (buckets by label), so their runs
# are short: a poll whose sessions ran recompresses about 5 projects' histograms, 0.4 ms for
# all it changed. Where a run ends follows from the project ids, not their places, so a
# project added or removed changes the runs about it, not every run after it.
HISTOGRAM_RUN = 4  # projects per run of a histogram's pieces, on average
RUN = 16  # projects per run of any other family's pieces, on average
_WINDOW = 32768  # how far back deflate refers
# A piece is a few kilobytes at most: a smaller hash table than zlib's default finds the same
# matches, and a compressor that fills less memory costs 30 % less to make and run.
_MEM_LEVEL = 6

# A gzip member header: deflate, no name, no mtime, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

# A piece's CRC-32 and length: what gzip's trailer needs of it.
Check = tuple[int, int]


def _load_crc32_combine() -> Callable[[int, int, int], int] | None:
    """zlib's ``crc32_combine64`` (the CRC-32 of A + B from those of A and B and B's length),
    which Python's zlib module does not offer, from the zlib library itself; None where it
    cannot be loaded or gives a wrong answer, and the gzip trailer's CRC-32 is then computed
    over the joined text."""
    # The usual names first: find_library runs ldconfig or a compiler.
    for name in ("libz.so.1", "libz.dylib", None):
        name = name or ctypes.util.find_library("z")
        if not name:
            continue
        try:
            # PyDLL keeps the GIL through the call: a call is short, and one that gave the GIL
            # up would wait for it back, thousands of times a scrape, behind other threads.
            combine = ctypes.PyDLL(name).crc32_combine64
        except (OSError, AttributeError):
            continue
        combine.restype = ctypes.c_ulong
        combine.argtypes = (ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int64)
        probe = (b"llamacloud_up 1.0\n", b'# TYPE x counter\nx_total{a="\xc3\xa9"} 2.0\n')
        whole = zlib.crc32(b"".join(probe))
        if combine(zlib.crc32(probe[0]), zlib.crc32(probe[1]), len(probe[1])) == whole:
            return cast(Callable[[int, int, int], int], combine)
    return None


crc32_combine = _load_crc32_combine()


def deflate_piece(data: bytes, level: int = CACHED_LEVEL, primer: bytes = b"") -> bytes:
    """Raw deflate ending on a full flush: byte-aligned, so pieces compressed apart can be
    concatenated into one valid stream. With a ``primer``, back-references may reach into it,
    so the piece is valid only right after that text."""
    if not data:
        return b""
    if primer:
        strategy = zlib.Z_DEFAULT_STRATEGY
        compressor = zlib.compressobj(
            level, zlib.DEFLATED, -15, _MEM_LEVEL, strategy, primer[-_WINDOW:]
        )
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, _MEM_LEVEL)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


class Body:
    """A scrape's text joined from pieces and, for gzip, deflate pieces: those compressed in
    advance are joined as they are, the rest compressed together where they fall. For gzip,
    the text's CRC-32 is combined from those of the pieces compressed in advance (with
    :data:`crc32_combine`) where it can be, so the text itself is never joined."""

    def __init__(self, compressed: bool) -> None:
        self._compressed = compressed
        self._raw: list[bytes] = []
        self._deflated: list[bytes] = []
        self._pending: list[bytes] = []
        # The text's CRC-32 and length so far, kept where the pieces' can be combined.
        self._combine = crc32_combine if compressed else None
        self._crc = 0
        self._length = 0

    def add(self, raw: bytes) -> None:
        """A piece to compress now (for gzip)."""
        self._raw.append(raw)
        if self._compressed:
            self._pending.append(raw)
            if self._combine is not None:
                self._crc = zlib.crc32(raw, self._crc)
                self._length += len(raw)

    def extend(
        self,
        raw: Iterable[bytes],
        deflated: Iterable[bytes],
        primer: bytes = b"",
        checks: Sequence[Check] | None = None,
    ) -> None:
        """Pieces, and the same pieces compressed in advance (read only for gzip), primed with
        ``primer``: used only when the text so far ends with that very piece, else the pieces
        are compressed now. ``checks``: the CRC-32 and length of each compressed piece's text
        (else they are computed from ``raw``)."""
        if not self._compressed:
            self._raw.extend(raw)
            return
        if primer and (not self._raw or self._raw[-1] is not primer):
            for piece in raw:
                self.add(piece)
            return
        start = len(self._raw)
        self._raw.extend(raw)
        if self._pending:
            self._deflated.append(deflate_piece(b"".join(self._pending), SCRAPE_LEVEL))
            self._pending.clear()
        self._deflated.extend(deflated)
        combine = self._combine
        if combine is None:
            return
        crc, length = self._crc, self._length
        if checks is None:
            for piece in self._raw[start:]:
                crc = zlib.crc32(piece, crc)
                length += len(piece)
        else:
            for piece_crc, piece_length in checks:
                crc = combine(crc, piece_crc, piece_length)
                length += piece_length
        self._crc, self._length = crc, length

    def finish(self) -> bytes:
        """The text, or one gzip member of it ending with what was added uncompressed."""
        if not self._compressed:
            return b"".join(self._raw)
        compressor = zlib.compressobj(SCRAPE_LEVEL, zlib.DEFLATED, -15)
        rest = compressor.compress(b"".join(self._pending)) + compressor.flush(zlib.Z_FINISH)
        if self._combine is not None:
            crc, length = self._crc, self._length
        else:  # one checksum over the joined text: far cheaper than one call per piece
            text = b"".join(self._raw)
            crc, length = zlib.crc32(text), len(text)
        trailer = struct.pack("<II", crc & 0xFFFFFFFF, length & 0xFFFFFFFF)
        return b"".join((_GZIP_HEADER, *self._deflated, rest, trailer))


@dataclass(frozen=True, eq=False)
class Rendered:
    """One project state's lines, rendered once."""

    state: ProjectState
    # By format (OpenMetrics or not), one piece per family in project_families order. The
    # formats share every piece but those with exemplars, whose places are in ``exemplars``.
    lines: dict[bool, list[bytes]]
    exemplars: frozenset[int]
    # The sample names in each piece, what ?name[]= picks by; one tuple shared by every
    # project of the same shape.
    sample_names: tuple[frozenset[str], ...]
    mark: int  # from the project id: where runs end
    # By group of families (StoreCollector.project_groups), what its pieces were made of.
    inputs: tuple[object, ...] = ()
    # The lines ?name[]= picked out of a piece, by (OpenMetrics with exemplars or not, family,
    # names picked): the same filter asked again (a federation job's) picks from this state's
    # pieces once.
    picks: dict[tuple[bool, int, frozenset[str]], bytes] = field(default_factory=dict)

    @staticmethod
    def mark_of(project_id: str) -> int:
        return zlib.crc32(project_id.encode())


@dataclass(frozen=True, eq=False)
class Run:
    """Consecutive projects' pieces, compressed together family by family, each family's
    primed with the piece of ``after`` (the project just before the run), if any."""

    members: tuple[Rendered, ...]
    after: Rendered | None
    # By format, one deflate piece per family, the members' pieces joined (b"" for a family
    # whose runs are of another size).
    deflated: dict[bool, list[bytes]]
    level: int
    # By format and family, the CRC-32 and length of the text each piece deflates.
    checks: dict[bool, list[Check]]

    def primer(self, openmetrics: bool, family: int) -> bytes:
        return b"" if self.after is None else self.after.lines[openmetrics][family]


def _changed(
    pairs: Iterable[tuple[Rendered | None, Rendered | None]], openmetrics: bool, families: int
) -> set[int]:
    """The families whose piece differs in some pair (new, old)."""
    out: set[int] = set()
    for new, old in pairs:
        if new is old:
            continue
        if new is None or old is None:
            return set(range(families))
        pieces = zip(new.lines[openmetrics], old.lines[openmetrics], strict=True)
        out.update(i for i, (a, b) in enumerate(pieces) if a != b)
    return out


def compress_run(
    members: tuple[Rendered, ...],
    after: Rendered | None,
    families: frozenset[int],
    level: int,
    old: Run | None,
) -> Run:
    """The run's deflate pieces of ``families``. A family whose text is that of ``old`` keeps
    its piece, compressed at least as well."""
    count = len(members[0].lines[False])
    run = Run(members, after, {False: [], True: []}, level, {False: [], True: []})
    redo = {fmt: set(families) for fmt in (False, True)}
    if old is not None and old.level >= level and len(old.members) == len(members):
        pairs = ((after, old.after), *zip(members, old.members, strict=True))
        redo = {fmt: _changed(pairs, fmt, count) for fmt in (False, True)}
    else:
        old = None
    own = set().union(*(m.exemplars for m in (after, *members) if m is not None))
    for fmt in (False, True):
        deflated, checks = run.deflated[fmt], run.checks[fmt]
        for family in range(count):
            if family not in families:
                deflated.append(b"")
                checks.append((0, 0))
            elif fmt and family not in own:  # no exemplar: the same bytes
                deflated.append(run.deflated[False][family])
                checks.append(run.checks[False][family])
            elif old is not None and family not in redo[fmt]:
                deflated.append(old.deflated[fmt][family])
                checks.append(old.checks[fmt][family])
            else:
                text = b"".join(m.lines[fmt][family] for m in members)
                deflated.append(deflate_piece(text, level, run.primer(fmt, family)))
                checks.append((zlib.crc32(text), len(text)))
    return run


# What to compress: a run's members, the project before them, and the run it replaces.
Job = tuple[tuple[Rendered, ...], Rendered | None, Run | None]


class Runs:
    """The runs of one size over the projects in the store's order, for the families whose
    runs are of that size; the caller holds a lock over every call but :meth:`compress`."""

    def __init__(self, size: int, families: frozenset[int]) -> None:
        self.size = size
        self.families = families
        self._runs: dict[str, Run] = {}  # by the id of their first project
        # The order last found changed: each run's project ids, and each project's run.
        self._layout: list[tuple[str, ...]] = []
        self._where: dict[str, int] = {}

    def spans(self, per_project: list[Rendered]) -> list[tuple[Rendered, ...]]:
        """The projects cut into runs: once a run has half the size, after a project whose
        mark ends one (one in half the size does), and at twice the size at most. So a run
        holds the size on average, and the run a project is in not much more."""
        spans: list[tuple[Rendered, ...]] = []
        start = 0
        half, longest = max(1, self.size // 2), 2 * self.size
        for n, rendered in enumerate(per_project, 1):
            length = n - start
            if (length >= half and rendered.mark % half == 0) or length == longest:
                spans.append(tuple(per_project[start:n]))
                start = n
        if start < len(per_project):
            spans.append(tuple(per_project[start:]))
        return spans

    def knows(self, project_id: str) -> bool:
        return project_id in self._where

    def lay_out(self, spans: list[tuple[Rendered, ...]]) -> None:
        self._layout = [tuple(r.state.project_id for r in span) for span in spans]
        self._where = {pid: j for j, ids in enumerate(self._layout) for pid in ids}

    def polled(self, project_id: str, cache: Mapping[str, Rendered]) -> list[Job]:
        """What a project's new lines make stale: its run, and the next one when it ends its
        own (its pieces prime that one), as the last order found has them."""
        run = self._where.get(project_id)
        if run is None:
            return []
        ids = self._layout[run]
        jobs: list[Job] = []
        for j in [run, run + 1] if ids[-1] == project_id else [run]:
            if j >= len(self._layout) or not all(p in cache for p in self._layout[j]):
                continue
            members = tuple(cache[p] for p in self._layout[j])
            after = cache.get(self._layout[j - 1][-1]) if j else None
            jobs.append((members, after, self._runs.get(members[0].state.project_id)))
        return jobs

    def found(self, spans: list[tuple[Rendered, ...]]) -> tuple[list[Run | None], dict[int, Job]]:
        """The runs ready for ``spans`` (None where none is), and what to compress for the
        others, by their place; the order is laid out again when some were missing."""
        found: list[Run | None] = []
        stale: dict[int, Job] = {}
        after: Rendered | None = None
        for j, members in enumerate(spans):
            run = self._runs.get(members[0].state.project_id)
            if run is None or run.members != members or run.after is not after:
                stale[j] = (members, after, run)
                run = None
            found.append(run)
            after = members[-1]
        if stale:
            self.lay_out(spans)
            if len(self._runs) > len(spans):
                first = {members[0].state.project_id for members in spans}
                for gone in [pid for pid in self._runs if pid not in first]:
                    del self._runs[gone]
        return found, stale

    def compress(self, jobs: Iterable[Job], level: int) -> list[Run]:
        """Needs no lock: what it reads never changes."""
        return [compress_run(m, after, self.families, level, old) for m, after, old in jobs]

    def install(self, runs: Iterable[Run]) -> None:
        for run in runs:
            self._runs[run.members[0].state.project_id] = run
