"""Telemetry users own: the Parquet request log, OpenTelemetry traces and metrics, the Prometheus endpoint."""
