"""The token bucket in front of the join endpoint and the logs service."""

from p2pswarm.ratelimit import BucketsByKey, TokenBucket


def test_a_burst_then_the_rate():
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]  # the burst, then nothing
    assert bucket.take(0.1) and not bucket.take(0.1)  # 10/s: one token per 0.1 s
    assert sum(bucket.take(100.0) for _ in range(10)) == 3  # idle time refills only up to the burst


def test_each_key_has_its_own_bucket():
    buckets = BucketsByKey(rate=1.0, burst=2.0, max_keys=10)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [True, True, False]  # a spent its burst
    assert buckets.take("b", 0.0) and buckets.take("b", 0.0)  # b still has its own
    assert not buckets.take("a", 0.5) and buckets.take("a", 1.0)  # a refills at its rate


def test_the_least_recently_used_key_is_forgotten_first():
    buckets = BucketsByKey(rate=0.0, burst=1.0, max_keys=2)
    assert buckets.take("a", 0.0) and buckets.take("b", 0.0)
    assert not buckets.take("a", 0.0)  # a is now the most recently used, b the stalest
    assert buckets.take("c", 0.0)  # evicts b
    assert len(buckets) == 2
    assert buckets.take("b", 0.0)  # b comes back with a fresh bucket...
    assert buckets.take("a", 0.0)  # ...which evicted a (then the stalest), so a comes back fresh too
