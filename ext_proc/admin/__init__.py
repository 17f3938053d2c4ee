"""Babelgate's admin API: keys, routes and usage. `admin_pb2` and `admin.pb` (the descriptor set Envoy's gRPC-JSON
transcoder reads) are compiled from `protos/` when the package is built; the rest is the service behind them."""
