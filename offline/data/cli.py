"""The data arguments every offline command shares (archives, cache, window) and the scenario cache they select."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from offline.data.dataset import prepare
from offline.data.nezha import Window
from offline.data.store import CACHE_ENV, DATASETS_ENV


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets", type=Path, help=f"archive directory (default ../shared/datasets, ${DATASETS_ENV})"
    )
    parser.add_argument("--cache", type=Path, help=f"cache directory (default .cache, ${CACHE_ENV})")
    parser.add_argument("--source", type=Path, help="an already-unpacked Nezha tree (with rca_data/) to use instead")
    parser.add_argument("--before", type=float, default=60.0,
                        help="window minutes before the fault: the rankers' reference (default 60)")
    parser.add_argument("--after", type=float, default=10.0, help="window minutes after the fault (default 10)")


def prepared_from_args(args: argparse.Namespace, progress: bool = True):
    if args.before <= 0 or args.after <= 0:
        raise ValueError("--before and --after must be positive minutes")
    window = Window(timedelta(minutes=args.before), timedelta(minutes=args.after))
    return prepare(args.datasets, args.cache, args.source, window, progress=progress)
