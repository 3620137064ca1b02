import pytest
import torch

from m2m.models.cache import ContextCache


def images(first: int, n: int) -> torch.Tensor:
    """Keys of ``n`` context images numbered from ``first``: (B=1, n, L=2, D=3), every entry its number."""
    return torch.arange(first, first + n, dtype=torch.float32).view(1, n, 1, 1).expand(1, n, 2, 3).clone()


def test_the_cache_keeps_the_newest_window_images_per_layer():
    cache = ContextCache(window=2)
    cache.update(0, images(0, 3), -images(0, 3))
    cache.update(1, images(10, 1), -images(10, 1))
    assert cache.n_cached == 2 and cache.tokens(0) == 2
    assert cache.keys[0][0, :, 0, 0].tolist() == [1, 2] and cache.values[0][0, :, 0, 0].tolist() == [-1, -2]
    cache.update(0, images(3, 1), -images(3, 1))
    assert cache.keys[0][0, :, 0, 0].tolist() == [2, 3]
    assert cache.keys[1][0, :, 0, 0].tolist() == [10]  # each layer its own
    assert cache.nbytes() == 4 * (2 * 2 * 2 * 3 + 2 * 1 * 2 * 3)
    unbounded = ContextCache()
    for i in range(5):
        unbounded.update(0, images(i, 1), images(i, 1))
    assert unbounded.n_cached == 5


def test_visible_reads_the_newest_images_and_follows_every_update():
    cache, joins = ContextCache(window=2), []

    def join(k, v):
        joins.append(1)
        return k[0, :, 0, 0].tolist(), v[0, :, 0, 0].tolist()

    cache.update(0, images(0, 2), -images(0, 2))
    assert cache.visible(0, None, join) == ([0, 1], [0, -1])
    assert cache.visible(0, 1, join) == ([1], [-1])
    assert cache.visible(0, 1, join) == ([1], [-1]) and len(joins) == 2  # the same window: joined once
    cache.update(0, images(2, 1), -images(2, 1))  # as many images as before, newer ones
    assert cache.visible(0, 1, join) == ([2], [-2])


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match="window W >= 1"):
        ContextCache(window=0)
