"""Read-model answers kept until the read models change, so a repeated read costs no query."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedAnswer:
    """One answer's body and ETag, and the read-model version it was read at."""

    version: int
    etag: str
    body: bytes


class AnswerCache:
    """The last answers to read-model queries, by URL, valid while `version` stands.

    The projector calls `read_models_changed` after every batch it folds (and when it sees a
    rebuild's swap), which makes every kept answer stale at once. A process that does not
    fold (an HTTP worker) can also `follow` another process's count of changes.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.version = 0
        self._capacity = capacity
        self._answers: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._changes: Callable[[], int] | None = None
        self._changes_seen = 0

    def follow(self, changes: Callable[[], int]) -> None:
        """Check `changes` (a count another process bumps) on every read; a new count
        makes every kept answer stale, as `read_models_changed` does."""
        self._changes, self._changes_seen = changes, -1  # never a count: the first read syncs

    def read_models_changed(self) -> None:
        """Every answer kept so far may be out of date."""
        self.version += 1
        self._answers.clear()

    def get(self, url: str) -> CachedAnswer | None:
        """The answer for `url` read at the current version, if kept."""
        if self._changes is not None and (count := self._changes()) != self._changes_seen:
            self._changes_seen = count
            self.read_models_changed()
        answer = self._answers.get(url)
        if answer is None or answer.version != self.version:
            return None
        self._answers.move_to_end(url)
        return answer

    def put(self, url: str, answer: CachedAnswer) -> None:
        """Keep `answer` unless the read models changed while it was being read."""
        if answer.version != self.version:  # read across a change: it may mix both states
            return
        self._answers[url] = answer
        self._answers.move_to_end(url)
        if len(self._answers) > self._capacity:
            self._answers.popitem(last=False)
