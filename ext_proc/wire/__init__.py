"""The ext_proc protocol's messages (Envoy's envoy.service.ext_proc.v3 and the core types it carries), compiled at
build time from protos/babelgate/envoy/v3 into upb-backed stubs: `external_processor_pb2`, `base_pb2`,
`processing_mode_pb2`, `http_status_pb2`. Never edited, never committed (see setup.py)."""
