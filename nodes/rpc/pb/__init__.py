"""Generated from proto/mmusim/v1/*.proto by ``python -m nodes.rpc.codegen``; do not edit."""
