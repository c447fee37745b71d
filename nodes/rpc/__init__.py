"""The gRPC face of a partition: generated messages (``pb/``), the codec between them and model
calls, servicers, clients and the status-code mapping. The only part of ``nodes`` that imports
grpc."""
