"""The one shard-writing engine of every training-set writer, and the index entries it records.

Both the converters (:func:`~dm_lightning.data.sources.frames.convert_frames`) and the
synthetic generator (:func:`dm_lightning.data.synthetic.write_split`) write a split the same
way, with :func:`write_shards`:

* shards are planned from the item list alone: shard ``i`` of ``<folder>/<split>-NNNNNN.tar``
  holds items ``[i * per_shard, (i + 1) * per_shard)``, minus those the caller's ``check``
  rejects (e.g. a missing input file; logged);
* a shard whose file already holds exactly those keys is skipped (a rerun resumes);
* the others are made one task per shard, in this process or in worker processes, and written
  atomically (:func:`~dm_lightning.data.shards.write_shard`); an item whose ``make`` raises
  :class:`ItemError` is logged and left out, and a shard left with no sample is not written;
* a tqdm bar on stderr follows the items.

:func:`split_entry` and :func:`source_entry` build the ``index.json`` entry of a split and of
a source (the one definition of that format); :func:`record_split` merges a split into an
existing index.

Nothing here imports torch: the converters start fast.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from dm_lightning.data.shards import read_shard_keys, shard_names, update_index, write_shard

if TYPE_CHECKING:
    from dm_lightning.data.sources.spec import SourceSpec

log = logging.getLogger(__name__)

DEFAULT_PER_SHARD = 500
MAX_LOGGED_PROBLEMS = 50
"""Problems logged one by one per run; later ones are only counted (and kept in the result)."""


class ItemError(Exception):
    """One item cannot be made (the message names the file or the reason): it is logged and
    left out of its shard; any other exception stops the run."""


class Item(Protocol):
    """What the engine needs of an item: its sample key (unique within the split)."""

    key: str


@dataclass
class SplitResult:
    """What :func:`write_shards` left on disk for one split.

    Attributes:
        shards: paths of the split's non-empty shards, in order.
        sizes: samples in each of ``shards``.
        samples_per_shard: the planned shard size.
        items: items planned.
        written: shards written now (the others were already complete).
        problems: messages of the items left out in this run, each naming the item.
    """

    shards: list[str]
    sizes: list[int]
    samples_per_shard: int
    items: int
    written: int
    problems: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        """Samples in the split's shards now."""
        return sum(self.sizes)

    @property
    def skipped(self) -> int:
        """Shards that were already complete."""
        return len(self.shards) - self.written


@dataclass
class _ShardTask:
    path: str
    items: list[Any]
    make: Callable[[Any], dict[str, Any]]


class _TaskResult(NamedTuple):
    path: str
    items: int
    samples: int
    problems: list[str]


def check_unique_keys(keys: Iterable[str]) -> None:
    """Raise ``ValueError`` naming a few keys that occur more than once."""
    duplicates = sorted(k for k, n in Counter(keys).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate sample keys in the frame list, e.g. {duplicates[:5]}")


def write_shards(
    folder: str | os.PathLike,
    split: str,
    items: Sequence[Item],
    per_shard: int,
    make: Callable[[Any], dict[str, Any]],
    *,
    check: Callable[[Any], str | None] | None = None,
    workers: int = 1,
    progress: bool = True,
    desc: str = "",
    unit: str = "sample",
    leave: bool = True,
) -> SplitResult:
    """Write ``items`` as the shards ``folder/<split>-NNNNNN.tar`` (see the module docstring).

    Args:
        folder: the source's shard folder (created if missing).
        split: split name of the shard files.
        items: what to write, each with a unique ``key``.
        per_shard: items per shard (>= 1); the last shard may hold fewer.
        make: item -> encoded sample (:func:`~dm_lightning.data.schema.encode_sample`);
            raises :class:`ItemError` for an item to leave out. Picklable when ``workers > 1``.
        check: item -> a problem message (naming the item) if it cannot be made at all, else
            None; called before planning, in this process.
        workers: processes, one shard each; 1 writes in this process.
        progress: tqdm bar on stderr.
        desc, unit, leave: the bar's label, unit and whether it stays after the run.

    Returns:
        The :class:`SplitResult`.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, name) for name in shard_names(split, len(items), per_shard)]
    check_unique_keys(item.key for item in items)
    problems: list[str] = []
    tasks: list[_ShardTask] = []
    sizes: dict[str, int] = {}
    for index, path in enumerate(paths):
        present = []
        for item in items[index * per_shard : (index + 1) * per_shard]:
            problem = None if check is None else check(item)
            if problem is None:
                present.append(item)
            else:
                problems.append(problem)
        if present and read_shard_keys(path) == {item.key for item in present}:
            sizes[path] = len(present)
            continue
        tasks.append(_ShardTask(path, present, make))

    written = 0
    bar = tqdm(
        total=len(items),
        desc=desc or split,
        unit=unit,
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
        leave=leave,
    )
    with bar, logging_redirect_tqdm():
        for number, problem in enumerate(problems):
            _log_problem(problem, number)
        bar.update(len(items) - sum(len(task.items) for task in tasks))
        for result in _run(tasks, workers, bar.update):
            for problem in result.problems:
                problems.append(problem)
                _log_problem(problem, len(problems) - 1)
            sizes[result.path] = result.samples
            written += result.samples > 0
            bar.set_postfix(written=written, problems=len(problems))
    if len(problems) > MAX_LOGGED_PROBLEMS:
        log.warning("%d problems in all (%d logged)", len(problems), MAX_LOGGED_PROBLEMS)
    shards = [path for path in paths if sizes.get(path, 0) > 0]
    sizes_list = [sizes[path] for path in shards]
    return SplitResult(shards, sizes_list, per_shard, len(items), written, problems)


def _write_task(task: _ShardTask, advance: Callable[[int], Any] | None = None) -> _TaskResult:
    """Make and write one shard (runs in a worker process when there are several);
    ``advance(1)`` after each item."""
    problems: list[str] = []

    def samples() -> Iterator[dict[str, Any]]:
        for item in task.items:
            try:
                sample = task.make(item)
            except ItemError as err:
                problems.append(f"{item.key}: {err}")
                sample = None
            if advance is not None:
                advance(1)
            if sample is not None:
                yield sample

    count = write_shard(task.path, samples())
    if count == 0 and os.path.exists(task.path):
        os.remove(task.path)  # a stale shard of other items; this one has none to hold
    return _TaskResult(task.path, len(task.items), count, problems)


def _run(
    tasks: list[_ShardTask], workers: int, advance: Callable[[int], Any]
) -> Iterator[_TaskResult]:
    """Results of the shard tasks, in completion order; ``advance`` counts items done (per
    item in this process, per shard from workers). On an error, pending tasks are cancelled,
    running ones finish, and the error is raised."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _write_task(task, advance)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        futures = [pool.submit(_write_task, task) for task in tasks]
        try:
            for future in as_completed(futures):
                result = future.result()
                advance(result.items)
                yield result
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _log_problem(message: str, number: int) -> None:
    if number < MAX_LOGGED_PROBLEMS:
        log.warning("skipped %s", message)


# --------------------------------------------------------------------------------------------
# index.json entries
# --------------------------------------------------------------------------------------------


def split_entry(out_dir: str | os.PathLike, result: SplitResult) -> dict[str, Any]:
    """The ``index.json`` entry of one split: ``{"shards": [paths relative to out_dir],
    "num_samples", "samples_per_shard", "shard_sizes": [samples per shard]}``, non-empty
    shards only."""
    return {
        "shards": [os.path.relpath(path, os.fspath(out_dir)) for path in result.shards],
        "num_samples": result.num_samples,
        "samples_per_shard": result.samples_per_shard,
        "shard_sizes": list(result.sizes),
    }


def source_entry(
    spec: SourceSpec, splits: dict[str, dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The ``index.json`` entry of one source: ``{"source", "height", "width", "min_depth",
    "max_depth", "depth_scale", **extra, "splits": {split: split_entry}}``."""
    return {
        "source": spec.label,
        "height": spec.height,
        "width": spec.width,
        "min_depth": spec.min_depth,
        "max_depth": spec.max_depth,
        "depth_scale": spec.depth_scale,
        **extra,
        "splits": splits,
    }


def record_split(
    out_dir: str | os.PathLike, spec: SourceSpec, split: str, result: SplitResult, label: str
) -> str:
    """Put one split into ``out_dir/index.json`` (format ``label``): the source's entry is
    refreshed from ``spec`` and its other splits, and every other source, are kept.

    Returns:
        The index path.
    """
    entry = split_entry(out_dir, result)

    def update(sources: dict[str, Any]) -> None:
        known = sources.get(spec.name)
        known = dict(known) if isinstance(known, dict) else {}
        known.update(source_entry(spec, {**known.get("splits", {}), split: entry}))
        sources[spec.name] = known

    index_path = os.path.join(os.fspath(out_dir), "index.json")
    update_index(index_path, update, label)
    return index_path
