"""Remote devices over TVM RPC: connection settings and the server token (``rpc``),
running and benchmarking artifacts on a device (``remote``) and a local tracker + servers on
127.0.0.1 (``localcluster``, for tests and try-outs)."""
