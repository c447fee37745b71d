"""The gRPC face of a partition: generated messages (``pb/``), the codec between them and model
calls, servicers, clients and the status-code mapping. The only part of ``nodes`` that imports
grpc.

Two transports carry the same requests (``interconnect.transport`` of a scenario,
``RayConfig.transport``): ``unary``, one gRPC call per request, and ``stream``, long-lived
bidirectional streams between each pair of partitions (``StreamService``), which cost about
half as much per request and carry several requests in one message when they are ready together.
"""

TRANSPORTS = ("unary", "stream")
# unary until stream meets every goal of issue 13 (benchmarks/bench_rpc.py): every test passes
# on stream, and at 64 in flight its callouts beat the raw stream messages, but its callout
# pair costs 1.0-1.45x one raw unary ping (1.3-1.8x before the per-request work was cut), not
# within the 1.2x goal in every run (README, bench_rpc figures)
DEFAULT_TRANSPORT = "unary"
