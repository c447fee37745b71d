"""The gRPC face of a partition: generated messages (``pb/``), the codec between them and model
calls, servicers, clients and the status-code mapping. The only part of ``nodes`` that imports
grpc.

Two transports carry the same requests (``interconnect.transport`` of a scenario,
``RayConfig.transport``): ``unary``, one gRPC call per request, and ``stream``, long-lived
bidirectional streams between each pair of partitions (``StreamService``), which cost about
half as much per request and carry several requests in one message when they are ready together.
"""

TRANSPORTS = ("unary", "stream")
# stream: it meets the goals of issue 13 (benchmarks/bench_rpc.py) and every test passes on it
DEFAULT_TRANSPORT = "stream"
