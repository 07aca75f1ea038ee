"""Where a study lives: Optuna's storages, not a home-made queue.

* default: a journal file in the search folder (``journal.log``), safe for several local
  processes (file locks), nothing to install;
* ``--storage postgresql://user:pw@host/db`` (or ``mysql://``, ``sqlite:///file.db``): Optuna's
  RDB storage, where workers on any machine join the study. Heartbeats mark a killed worker's
  trial failed once it has been silent for the grace period, and the trial is re-queued once.

A journal file has no heartbeats; there the search's parent process re-queues the trials of a
local worker that died (see ``study.requeue_dead``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError

JOURNAL = "journal.log"
RDB_PREFIXES = ("postgresql", "postgres", "mysql", "sqlite", "oracle", "mssql")


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("graft search needs Optuna: pip install 'graftkit[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def describe(url: str | None, out: Path) -> str:
    """The storage as it is recorded in search.json (no password)."""
    if not url:
        return f"journal:{out / JOURNAL}"
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


def open_storage(url: str | None, out: Path, heartbeat_s: int = 30) -> Any:
    optuna = optuna_module()
    if not url or url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = Path(url.removeprefix("journal:")) if url else out / JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in RDB_PREFIXES:
        raise ConfigError(f"--storage {url!r}: give a database URL (postgresql://user:pw@host/db, "
                          "sqlite:///file.db) or a journal file path (*.log)")
    if scheme in ("postgresql", "postgres") and "+" not in url.split(":", 1)[0]:
        url = "postgresql+psycopg:" + url.split(":", 1)[1]  # psycopg 3, not the dialect default
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError("a PostgreSQL storage needs psycopg: pip install "
                              "'graftkit[search]'") from None
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat_s, grace_period=max(2 * heartbeat_s, 2),
            heartbeat_stale_trial_callback=retry, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # sqlalchemy's OperationalError etc.: an unreachable database
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--storage {describe(url, out)}: cannot open it ({msg})") from None
