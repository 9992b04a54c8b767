"""The token bucket in front of the join endpoint and the logs service."""

from p2pswarm.ratelimit import TokenBucket


def test_a_burst_then_the_rate():
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]  # the burst, then nothing
    assert bucket.take(0.1) and not bucket.take(0.1)  # 10/s: one token per 0.1 s
    assert sum(bucket.take(100.0) for _ in range(10)) == 3  # idle time refills only up to the burst
