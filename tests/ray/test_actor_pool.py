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


def test_an_autoscaling_pool_can_grow(ray_cluster):
    """Ray Data grows a pool when its tasks in flight per running slot reach the threshold; the pool's
    own limit (one waiting shard per actor) must let it get there, in the context the dataset keeps."""
    for prefetch in (0, 1, 3):
        pool = actor_pool(ClusterConfig(actors="1,4", prefetch_shards=prefetch, wait_for_actors_s=77), shards=10)
        context = ray.data.from_items([{"shard": "x"}]).context
        most = pool.max_tasks_in_flight_per_actor / pool.max_concurrent_calls_per_actor
        assert 1 < context.autoscaling_config.actor_pool_util_upscaling_threshold < most
        assert context.wait_for_min_actors_s == 77
