"""The actor pool the rerank and index jobs share: sizes, and starting only once MIN actors are up."""

import ray

from rayrank.config import ClusterConfig
from rayrank.jobs._ray import actor_pool


def test_pool_never_outnumbers_shards_and_waits_for_min_actors():
    cluster = ClusterConfig(actors="2,4", wait_for_actors_s=120)
    wide = actor_pool(cluster, shards=10)
    assert (wide.min_size, wide.max_size) == (2, 4)
    assert ray.data.DataContext.get_current().wait_for_min_actors_s == 120
    last = actor_pool(cluster, shards=1)  # a resumed job with one shard left: MIN must shrink with MAX
    assert (last.min_size, last.max_size) == (1, 1)
