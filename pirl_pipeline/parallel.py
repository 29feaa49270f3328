"""A process pool with a progress bar, sized so SimpleITK's threads do not oversubscribe the cores."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from multiprocessing import get_context
from typing import TypeVar

import SimpleITK as sitk
from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], num_processes: int, desc: str) -> list[R]:
    """``[fn(x) for x in items]`` over ``num_processes`` spawned workers (in order), with tqdm.

    The first exception raised by a worker propagates (the pool is then terminated).
    """
    items = list(items)
    processes = max(1, min(num_processes, len(items)))
    if processes == 1:
        return [fn(x) for x in tqdm(items, desc=desc)]
    threads = max(1, (os.cpu_count() or 1) // processes)
    with (get_context("spawn").Pool(processes, initializer=_init_worker, initargs=(threads,)) as pool,
          tqdm(total=len(items), desc=desc) as bar):
        results = []
        for result in pool.imap(fn, items):
            results.append(result)
            bar.update()
        return results
