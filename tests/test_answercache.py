"""The answer cache: answers live until the read models change, and never outlive it."""

from __future__ import annotations

from projector.answercache import AnswerCache, CachedAnswer


def answer(cache: AnswerCache, body: bytes = b"{}") -> CachedAnswer:
    return CachedAnswer(cache.version, '"tag"', body)


def test_a_kept_answer_is_returned_while_the_read_models_stand() -> None:
    cache = AnswerCache()
    kept = answer(cache)
    cache.put("/v1/a", kept)
    assert cache.get("/v1/a") == kept
    assert cache.get("/v1/b") is None


def test_a_change_of_the_read_models_makes_every_kept_answer_stale() -> None:
    cache = AnswerCache()
    cache.put("/v1/a", answer(cache))
    cache.read_models_changed()
    assert cache.get("/v1/a") is None


def test_an_answer_read_across_a_change_is_not_kept() -> None:
    """Read at version v, finished after the change: it may show either state, so drop it."""
    cache = AnswerCache()
    started = answer(cache)
    cache.read_models_changed()
    cache.put("/v1/a", started)
    assert cache.get("/v1/a") is None


def test_the_least_recently_used_answer_goes_first_beyond_capacity() -> None:
    cache = AnswerCache(capacity=2)
    for url in ("/1", "/2"):
        cache.put(url, answer(cache))
    assert cache.get("/1") is not None  # /1 is now the most recent
    cache.put("/3", answer(cache))
    assert (cache.get("/1") is not None, cache.get("/2"), cache.get("/3") is not None) == (
        True,
        None,
        True,
    )


def test_a_followed_count_that_moves_makes_every_kept_answer_stale() -> None:
    """An HTTP worker follows the writer process's count: a bump it has no frame for yet
    still drops what it kept, on the very next read."""
    count = [7]
    cache = AnswerCache()
    cache.follow(lambda: count[0])
    assert cache.get("/v1/a") is None  # the first read takes up the count
    cache.put("/v1/a", answer(cache))
    assert cache.get("/v1/a") is not None  # the count stands: the answer stands
    count[0] += 1
    assert cache.get("/v1/a") is None


def test_an_answer_read_while_a_followed_count_moved_is_not_served() -> None:
    """Read before the bump, kept after it (no read came between): the next read drops it."""
    count = [0]
    cache = AnswerCache()
    cache.follow(lambda: count[0])
    assert cache.get("/v1/a") is None
    started = answer(cache)
    count[0] += 1
    cache.put("/v1/a", started)
    assert cache.get("/v1/a") is None
