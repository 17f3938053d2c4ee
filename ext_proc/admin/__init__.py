"""Babelgate's admin API: the protos in `protos/` compiled at build time into this package (`admin_pb2`,
`admin.pb` for Envoy's gRPC-JSON transcoder)."""
