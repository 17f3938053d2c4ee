"""Telemetry through the real Envoy: the Parquet request log (one row per request, whichever stage saw its end)
and a real scrape of the Prometheus endpoint, after traffic of every kind; provider secrets and virtual keys appear
in none of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pyarrow.dataset as ds
import pytest

from ext_proc.launch.processes import free_port

from ..eventually import eventually
from .gateways import GatewayBuilder
from .support import fault, room_in_window

HELLO = [{"role": "user", "content": "hello there"}]
PROVIDER_SECRET = "sk-telemetry-provider-secret-0123456789"
REQUESTS_SENT = 7
"""By the `observed` fixture: one row, one access-log line and one count in `babelgate_requests_total` each."""


@dataclass
class Observed:
    rows: list[dict]
    metrics: str
    logs: str
    key: str
    limited_key: str
    log_dir: Path
    access_lines: list[dict]


def build_telemetry_gateway(build: GatewayBuilder, metrics_port: int, access_log: Path, *,
                            openai_key: str = PROVIDER_SECRET, anthropic_key: str = PROVIDER_SECRET,
                            key: str | None = None, limited_key: str | None = None) -> None:
    """Direct and chain routes (the chain logs content) over an OpenAI and an Anthropic demo, keys "main" and
    "limited", and every output: the Parquet request log in `<workdir>/requests`, Prometheus, Envoy's access log."""
    build.backend("oa", build.demo("openai", api_key=openai_key), outlier_detection=None)
    build.backend("an", build.demo("anthropic", "anthropic", api_key=anthropic_key), outlier_detection=None)
    build.route("direct", ("oa", "gpt-direct"))
    build.route("chain", ("oa", "gpt-chain"), ("an", "claude-chain"), log_content=True)
    build.key("main", key, team="platform")
    build.key("limited", limited_key, limits=[{"window": "minute", "requests": 1}])
    build.set(prices=[{"backend": "an", "model": "claude-chain", "input": 3, "output": 15}],
              routing={"cooldown_max": "1ms"},
              telemetry={"request_log": {"destination": str(build.workdir / "requests"), "flush_seconds": "200ms"},
                         "metrics": {"prometheus_port": metrics_port}, "access_log": str(access_log)})


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("telemetry")
    with GatewayBuilder(workdir) as build:
        metrics_port = free_port()
        build_telemetry_gateway(build, metrics_port, workdir / "access.log")
        gateway = build.start()
        client = gateway.client("main", timeout=20)
        client.chat.completions.create(model="direct", messages=HELLO, user="u-1")
        list(client.chat.completions.create(model="chain", messages=HELLO, stream=True,
                                            stream_options={"include_usage": True}))
        client.chat.completions.create(model="chain", messages=HELLO, extra_headers=fault("openai:503"))
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="chain", messages=HELLO,
                                           extra_headers=fault("openai:500,anthropic:500"))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gateway.url + "/v1", api_key="bg-not-a-key", max_retries=0).models.list()
        limited = gateway.client("limited", timeout=20)
        room_in_window("minute")  # the key's one request a minute and its refusal, in the same minute
        limited.chat.completions.create(model="direct", messages=HELLO)
        with pytest.raises(openai.RateLimitError):
            limited.chat.completions.create(model="direct", messages=HELLO)
        metrics = eventually(lambda: _every_request_counted(metrics_port), timeout=30,
                             what=f"Prometheus counts all {REQUESTS_SENT} requests and the refusal")
        gateway.stop_servers()  # a graceful stop flushes the log
        rows = ds.dataset(workdir / "requests", format="parquet", partitioning="hive").to_table().to_pylist()
        build.supervisor.stop_all()  # Envoy writes its access log out as it stops
        logs = "".join(p.read_text(errors="replace") for p in workdir.glob("*.log"))
        access = [json.loads(line) for line in (workdir / "access.log").read_text().splitlines()]
        yield Observed(rows, metrics, logs, gateway.keys["main"], gateway.keys["limited"], workdir / "requests",
                       access)


def _every_request_counted(metrics_port: int) -> str:
    """The Prometheus scrape once every request sent is in it, else "". A request's metrics are recorded as its
    ext_proc stream closes, which is after Envoy has answered the client (a refusal's 429 too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = prometheus_samples(text)
    counted = sum(value for (name, _), value in samples.items() if name == "babelgate_requests_total")
    refused = ("babelgate_rate_limit_refusals_total", (("scope", "key"),)) in samples
    return text if counted >= REQUESTS_SENT and refused else ""


def _one(rows: list[dict], **wanted: object) -> dict:
    found = [r for r in rows if all(r.get(k) == v for k, v in wanted.items())]
    assert len(found) == 1, (wanted, rows)
    return found[0]


def test_one_row_per_request(observed: Observed) -> None:
    assert len(observed.rows) == REQUESTS_SENT
    assert len({r["request_id"] for r in observed.rows}) == REQUESTS_SENT


def test_direct_route_row(observed: Observed) -> None:
    row = _one(observed.rows, route="direct", key_id="main")
    assert (row["status"], row["backend"], row["served_model"], row["attempts"]) == (200, "oa", "gpt-direct", 1)
    assert row["team"] == "platform" and row["user"] == "u-1"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["latency_ms"] > 0
    assert row["prompt"] is None and row["completion"] is None  # the route does not log content


def test_streamed_chain_row_has_time_to_first_token_and_content(observed: Observed) -> None:
    row = _one(observed.rows, route="chain", stream=True)
    assert row["status"] == 200 and row["backend"] == "oa" and row["ttft_ms"] is not None
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert "hello there" in row["prompt"] and row["completion"]


def test_failover_row_counts_both_attempts_and_the_cost(observed: Observed) -> None:
    row = _one(observed.rows, route="chain", stream=False, status=200)
    assert (row["backend"], row["served_model"], row["attempts"]) == ("an", "claude-chain", 2)
    expected = (row["input_tokens"] * 3 + row["output_tokens"] * 15) / 1e6
    assert row["cost_usd"] == pytest.approx(expected, abs=1e-6)


def test_failed_final_answer_row(observed: Observed) -> None:
    row = _one(observed.rows, route="chain", status=500)
    assert row["attempts"] == 2 and row["error_type"] and row["output_tokens"] == 0


def test_refusals_are_rows_too(observed: Observed) -> None:
    assert _one(observed.rows, status=401)["error_type"]
    refused = _one(observed.rows, status=429)
    assert refused["key_id"] == "limited" and refused["error_type"] == "rate_limit_exceeded"


def test_prometheus_scrape_has_the_genai_metrics(observed: Observed) -> None:
    text = observed.metrics
    assert 'gen_ai_client_token_usage' in text and 'gen_ai_token_type="input"' in text
    assert 'gen_ai_token_type="output"' in text
    assert "gen_ai_client_operation_duration_seconds_bucket" in text
    assert "gen_ai_server_time_to_first_token_seconds_count" in text
    samples = prometheus_samples(text)
    assert samples[("babelgate_requests_total", (("backend", "an"), ("route", "chain"), ("status", "200")))] == 1
    assert samples[("babelgate_failovers_total", (("route", "chain"),))] == 2  # one per request that failed over
    assert samples[("babelgate_rate_limit_refusals_total", (("scope", "key"),))] == 1
    assert ("babelgate_internal_total", (("counter", "limiter_store_errors"),)) in samples


def prometheus_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, labels without OpenTelemetry's scope labels): value}."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or line.startswith("#"):
            continue
        labels = tuple(sorted((k, v) for k, v in re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")
                              if not k.startswith("otel_scope")))
        found[(match.group(1), labels)] = float(match.group(3))
    return found


def test_no_secret_anywhere(observed: Observed) -> None:
    outputs = [observed.metrics, observed.logs, repr(observed.rows), repr(observed.access_lines)]
    for secret in (PROVIDER_SECRET, observed.key, observed.limited_key):
        assert all(secret not in text for text in outputs)


def _usage(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "ext_proc", "usage", *args], capture_output=True, text=True,
                          check=True).stdout


def test_usage_from_log_summarises_per_key_model_and_backend(observed: Observed, tmp_path: Path) -> None:
    summary = json.loads(_usage("--from-log", str(observed.log_dir), "--json"))
    chain_an = next(r for r in summary if (r["key"], r["model"], r["backend"]) == ("main", "chain", "an"))
    assert chain_an["requests"] == 2 and chain_an["errors"] == 1 and chain_an["error rate"] == 0.5
    assert chain_an["cost USD"] > 0 and chain_an["p95 ms"] >= chain_an["p50 ms"] > 0
    assert sum(r["requests"] for r in summary) == REQUESTS_SENT
    table = _usage("--from-log", str(observed.log_dir), "--chart", str(tmp_path / "traffic.png"))
    assert "p95 ms" in table.splitlines()[0] and "chain" in table
    assert (tmp_path / "traffic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_duckdb_reads_the_log(observed: Observed) -> None:
    import duckdb

    [(count, tokens)] = duckdb.connect().execute(
        f"select count(*), sum(output_tokens) from read_parquet('{observed.log_dir}/**/*.parquet', "
        "hive_partitioning = true)").fetchall()
    assert count == REQUESTS_SENT and tokens == sum(r["output_tokens"] for r in observed.rows)


def test_envoy_access_log_carries_babelgate_metadata(observed: Observed) -> None:
    requests = [line for line in observed.access_lines if "method" in line]
    attempts = [line for line in observed.access_lines if "upstream_cluster" in line]
    assert len(requests) == REQUESTS_SENT
    direct = next(line for line in requests if line["route"] == "direct" and line["key_id"] == "main")
    assert direct["backend"] == "oa" and direct["model"] == "gpt-direct" and int(direct["output_tokens"]) > 0
    failed_over = [line for line in requests if line["route"] == "chain" and line["status"] == 200]
    assert {line["attempts"] for line in failed_over} == {1, 2}
    served = next(line for line in failed_over if line["attempts"] == 2)
    assert (served["backend"], served["model"]) == ("an", "claude-chain") and float(served["cost_usd"]) > 0
    assert int(served["input_tokens"]) > 0
    tried = [(line["backend"], line["status"]) for line in attempts if line["request_id"] == served["request_id"]]
    assert tried == [("oa", 503), ("an", 200)]
