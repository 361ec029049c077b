"""Progress of a scoring run: a tqdm bar on a terminal, periodic log lines elsewhere (CI logs, cluster jobs)."""
from __future__ import annotations

import logging
import sys
import time

_logger = logging.getLogger("agiqa.score")


class Progress:
    """Counts scored and failed images against `total`; `done` were scored by an earlier run."""

    def __init__(self, total: int, done: int = 0, every: float = 30.0, bar: bool | None = None, label: str = ""):
        self.total, self.done, self.every, self.label = total, done, every, label
        self.scored = self.failed = 0
        self.logged: int | None = None  # images seen at the last log line (the final one is not repeated)
        self.start = self.last_log = time.monotonic()
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", desc=label or "scoring", file=sys.stderr)

    def update(self, scored: int, failed: int) -> None:
        self.scored += scored
        self.failed += failed
        if self.bar is not None:
            self.bar.update(scored + failed)
            self.bar.set_postfix(errors=self.failed, refresh=False)
        elif time.monotonic() - self.last_log >= self.every:
            self._log()

    def _log(self) -> None:
        self.last_log = time.monotonic()
        self.logged = self.done + self.scored + self.failed
        _logger.info(self.line())

    def line(self) -> str:
        """`scored 1200/5000 images (24.0 img/s, ETA 2m38s), 3 errors`."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.scored + self.failed) / elapsed
        seen = self.done + self.scored + self.failed
        eta = (self.total - seen) / rate if rate > 0 else float("inf")
        prefix = f"{self.label}: " if self.label else ""
        return (f"{prefix}scored {seen}/{self.total} images ({rate:.1f} img/s, ETA {_duration(eta)}), "
                f"{self.failed} errors")

    def close(self) -> None:
        """The final state, once: the bar's last line on a terminal, else a log line unless the last one said it."""
        if self.bar is not None:
            self.bar.close()
        elif self.logged != self.done + self.scored + self.failed:
            self._log()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
