"""The gRPC face of a partition: generated messages (``pb/``), the codec between them and model
calls, servicers, clients and the status-code mapping. The only part of ``nodes`` that imports
grpc.

Two transports carry the same requests (``interconnect.transport`` of a scenario,
``RayConfig.transport``): ``unary``, one gRPC call per request, and ``stream``, long-lived
bidirectional streams between each pair of partitions (``StreamService``), which cost about
half as much per request and carry several requests in one message when they are ready together.
"""

TRANSPORTS = ("unary", "stream")
# stream, as issue 13 asks ("streams, not calls"): in every run of benchmarks/bench_rpc.py a
# callout on it takes half the latency of one on unary and two thirds of the CPU, and at 64 in
# flight it makes 1.7x the raw stream's messages (unary 0.3x), so the instrument weighs half as
# much in a ray figure (quickstart: callout_rtt p50 1.6 ms against 2.8 ms). Its callout pair's
# goal, 1.2x one raw unary ping, is met over TLS and not in plaintext (1.17x and 1.33x, README).
# unary stays, for comparison.
DEFAULT_TRANSPORT = "stream"
