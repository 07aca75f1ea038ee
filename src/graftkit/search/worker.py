"""One search worker process: ``python -m graftkit.search.worker SEARCH_DIR`` (started by
``graft search --workers K``). It reads the search folder's settings and runs trials of the
study until the study has enough."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import run as rd
from ..errors import GraftError
from .settings import SETTINGS, SearchSettings
from .study import optimize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    saved = rd.read_json(args.out / SETTINGS)
    s = SearchSettings(**saved["settings"])
    url = os.environ.get("GRAFT_SEARCH_STORAGE") or saved.get("storage_url")
    try:
        optimize(s, args.out, url, args.threads, quiet=args.quiet)
    except GraftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
