"""Generated from proto/mmusim/v2/*.proto by ``python -m nodes.rpc.codegen``; do not edit."""
