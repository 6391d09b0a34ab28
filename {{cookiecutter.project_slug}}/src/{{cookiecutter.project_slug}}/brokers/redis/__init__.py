"""Redis Streams: a stream read through a consumer group, XACK after the work, XAUTOCLAIM for the abandoned."""
