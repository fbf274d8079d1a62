"""What the benchmarks driven by `run.py` share: the shape of a measured figure, and an event-loop lag ticker.

Not a benchmark itself. Every figure keeps all its kept samples, so `run.py` can quote a median with its min-max and
a ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Plan:
    """How long to measure: rounds of `iterations` calls, the first `warmup` rounds discarded."""

    rounds: int
    warmup: int
    iterations: int


@dataclass
class Figure:
    """One measured quantity: its kept samples (warm-up already dropped), and what it is compared with."""

    section: str
    label: str
    unit: str
    samples: list[float]
    # The label of the figure in the same section this one is a ratio to; None for a baseline or a bare count.
    baseline: str | None = None
    # A target in words, and whether it was met; None when the figure has no target.
    target: str | None = None
    met: bool | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)


@dataclass
class Section:
    """A benchmark's figures, plus tables and notes that are facts rather than timings."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, unit: str, samples: list[float], **extra: object) -> Figure:
        figure = Figure(self.title, label, unit, samples, **extra)  # type: ignore[arg-type]
        self.figures.append(figure)
        return figure

    def find(self, label: str) -> Figure:
        return next(figure for figure in self.figures if figure.label == label)

    def ratio(self, figure: Figure) -> float | None:
        if figure.baseline is None:
            return None
        base = self.find(figure.baseline).median
        return figure.median / base if base else None

    def print(self) -> None:
        """The section as a bench file run on its own prints it: a line per figure, its ratio and verdict, then the
        notes."""
        print(f"## {self.title}")
        for figure in self.figures:
            ratio = self.ratio(figure)
            ratio_text = f"{ratio:6.2f}x" if ratio is not None else "   base"
            verdict = "" if figure.met is None else (" met" if figure.met else " MISSED")
            spread = f"{figure.low:.2f}-{figure.high:.2f}"
            print(f"{figure.label:<58} {figure.median:10.2f} {figure.unit:<11} ({spread}) {ratio_text}{verdict}")
        for note in self.notes:
            print(f"- {note}")
        print()


class LagTicker:
    """Wakes every `interval` seconds and records how late it woke: the longest lag is the longest time the event
    loop was held by something else (a blocking call, a garbage collection, one long burst of ready work), or the
    process was not running at all (the machine gave its core to another process)."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.ticks: list[Tick] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            slept, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.interval)
            woke, cpu_woke = time.perf_counter(), time.thread_time()
            due = slept + self.interval
            # Time off the CPU beyond the interval the loop may have spent idle: the machine ran something else.
            descheduled = (woke - slept) - (cpu_woke - cpu) - self.interval
            self.ticks.append(Tick(due, max(due, woke), max(0.0, descheduled)))

    def start(self) -> None:
        self.ticks.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def lags(self) -> list[float]:
        return [tick.lag for tick in self.ticks]

    @property
    def worst_ms(self) -> float:
        return max(self.lags, default=0.0) * 1000

    def percentile_ms(self, fraction: float) -> float:
        if not self.ticks:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


@dataclass(frozen=True, slots=True)
class Tick:
    """One wake-up of a `LagTicker` (perf_counter seconds): when it was due, when it woke, and how long the loop's
    thread was off the CPU beyond the interval it may have idled: descheduled by the machine, not busy (an upper
    bound on what the process itself held the loop for is the lag less this)."""

    due: float
    woke: float
    descheduled: float

    @property
    def lag(self) -> float:
        return self.woke - self.due


@dataclass(frozen=True, slots=True)
class Collection:
    """One garbage collection: when it started (perf_counter seconds), how long it ran, which generation, the
    CPU time it took (less than `seconds` when the machine took the CPU away in the middle of it), and how many
    unreachable objects it found (garbage only the collector could free: reference cycles)."""

    started: float
    seconds: float
    generation: int
    cpu_seconds: float
    collected: int = 0

    @property
    def ended(self) -> float:
        return self.started + self.seconds


class GCWatch:
    """Every garbage collection made while it is entered, through `gc.callbacks`, to be set beside a `LagTicker`:
    a lag whose window holds a collection was (that much) the collector's."""

    def __init__(self) -> None:
        self.collections: list[Collection] = []
        self._started = self._cpu_started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        if phase == "start":
            self._started, self._cpu_started = now, cpu
        else:
            started = self._started
            self.collections.append(
                Collection(started, now - started, info["generation"], cpu - self._cpu_started, info["collected"])
            )

    def __enter__(self) -> GCWatch:
        self.collections.clear()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def count(self, generation: int) -> int:
        return sum(1 for collection in self.collections if collection.generation == generation)

    def worst_ms(self, generation: int | None = None) -> float:
        return 1000 * max(
            (c.seconds for c in self.collections if generation is None or c.generation == generation), default=0.0
        )

    def worst_cpu_ms(self, generation: int | None = None) -> float:
        return 1000 * max(
            (c.cpu_seconds for c in self.collections if generation is None or c.generation == generation), default=0.0
        )

    def collected(self) -> int:
        return sum(collection.collected for collection in self.collections)

    def total_ms(self) -> float:
        return 1000 * sum(collection.seconds for collection in self.collections)

    def lags_split(self, ticker: LagTicker) -> list[tuple[Tick, float]]:
        """Each tick of `ticker` with the part of its lag spent collecting, in seconds. One sweep over both, in
        time order."""
        collections = sorted(self.collections, key=lambda collection: collection.started)
        split = []
        first = 0
        for tick in ticker.ticks:
            while first < len(collections) and collections[first].ended <= tick.due:
                first += 1
            collecting = 0.0
            for collection in collections[first:]:
                if collection.started >= tick.woke:
                    break
                collecting += min(tick.woke, collection.ended) - max(tick.due, collection.started)
            split.append((tick, collecting))
        return split
