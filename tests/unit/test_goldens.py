"""The golden fixture checks every provider shares, run over each description in `goldens.py`.

For every provider: each client request translates to its golden provider request, and both sides fit their SDK's
types; each provider answer and stream translates to its golden OpenAI answer or chunks, which fit the openai SDK's
models; every OpenAI request field is mapped, dropped or refused on purpose, with a sample naming it; and provider
errors become OpenAI errors without echoing what we don't recognise. What only one provider does is tested in its
own module (tests/unit/test_<provider>_translation.py, test_openai_passthrough.py).
"""

from __future__ import annotations

import copy
import json

import pydantic
import pytest
from openai.types.chat import ChatCompletion

from ext_proc.providers.common import DROPPED, REFUSED
from tests.unit.goldens import BASE_BODY, CREATED, GOLDENS, Golden, openai_params
from tests.unit.provider_checks import (
    assert_error_envelope,
    assert_every_openai_field_has_a_rule,
    assert_no_undeclared_keys,
    assert_refused_field_is_named,
    assert_refused_with_param,
    assert_valid_chunks,
    feed_stream,
    fields_with_rule,
)


def _each(golden_cases: list[tuple[Golden, object]]) -> list[object]:
    return [pytest.param(golden, case, id=f"{golden}-{case['name'] if isinstance(case, dict) else case}")
            for golden, case in golden_cases]


def _with_rules() -> list[Golden]:
    return [golden for golden in GOLDENS if golden.rules is not None]


def _table_cases(name: str) -> list[object]:
    return _each([(golden, case) for golden in _with_rules() for case in golden.rules.tables.load(name)])


def _sample_cases(name: str) -> list[object]:
    return _each([(golden, field) for golden in _with_rules() for field in sorted(golden.rules.tables.load(name))])


REQUEST_CASES = _each([(golden, case) for golden in GOLDENS for case in golden.request_cases()])
RESPONSE_CASES = _each([(golden, case) for golden in GOLDENS for case in golden.response_cases()])
STREAM_CASES = [pytest.param(golden, case, usage, id=f"{golden}-{case}{'-usage' if usage else ''}")
                for golden in GOLDENS for case, usage in golden.stream_cases()]
FOLDERS = sorted({golden.fixtures.folder for golden in GOLDENS})

UNRECOGNISED_BODIES = {
    b"upstream proxy says: x-api-key sk-ant-api03-SECRET was rejected": "sk-ant",
    b"proxy says: Authorization AWS4-HMAC-SHA256 Credential=AKIASECRET was rejected": "AKIA",
    b"upstream proxy says: Bearer co-SECRET was rejected": "co-SECRET",
    b"proxy: x-goog-api-key AIzaSyD-SECRET was rejected": "AIza",
    b"<html>Bearer ya29.SECRET</html>": "ya29",
}
"""Error bodies no provider writes, each with a credential some proxy echoed: the client must not see it."""


# --- requests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("golden", "case"), REQUEST_CASES)
def test_request_translates_to_golden_provider_request(golden: Golden, case: str) -> None:
    client, provider = golden.request_pair(case)
    body = golden.fixtures.load(client)
    translated = golden.translate(body)
    assert translated == golden.fixtures.load(provider)
    golden.valid_request(translated, body.get("stream") is True)


@pytest.mark.parametrize(("golden", "case"), REQUEST_CASES)
def test_golden_provider_requests_fit_the_provider_sdk(golden: Golden, case: str) -> None:
    client, provider = golden.request_pair(case)
    golden.valid_request(golden.fixtures.load(provider), golden.fixtures.load(client).get("stream") is True)


@pytest.mark.parametrize(("golden", "case"), REQUEST_CASES)
def test_golden_client_requests_fit_the_openai_sdk(golden: Golden, case: str) -> None:
    body = golden.fixtures.load(golden.request_pair(case)[0])
    pydantic.TypeAdapter(openai_params(body)).validate_python(body)


@pytest.mark.parametrize("golden", GOLDENS, ids=str)
def test_request_translation_does_not_modify_the_client_body(golden: Golden) -> None:
    for case in golden.request_cases():
        name = golden.request_pair(case)[0]
        body = golden.fixtures.load(name)
        golden.translate(body)
        assert body == golden.fixtures.load(name), case


@pytest.mark.parametrize(("golden", "mistake"),
                         _each([(golden, mistake) for golden in GOLDENS for mistake in golden.broken_requests]))
def test_request_validator_catches_a_broken_request(golden: Golden, mistake: str) -> None:
    request = copy.deepcopy(golden.translate(BASE_BODY))
    golden.valid_request(request, False)
    golden.broken_requests[mistake](request)
    with pytest.raises((AssertionError, ValueError)):
        golden.valid_request(request, False)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_every_fixture_file_belongs_to_a_golden_pair(folder: object) -> None:
    read = {name for golden in GOLDENS if golden.fixtures.folder == folder for name in golden.pair_files()}
    pair_files = {path.name for family in ("request_", "response_", "stream_")
                  for path in folder.glob(f"{family}*.*.*")}
    assert pair_files - read == set(), "fixture files no golden reads (a misnamed or unpaired file?)"


# --- field rules ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("golden", _with_rules(), ids=str)
def test_every_openai_request_field_has_a_rule(golden: Golden) -> None:
    assert_every_openai_field_has_a_rule(golden.rules.table)


@pytest.mark.parametrize("golden", _with_rules(), ids=str)
def test_every_refused_and_dropped_field_has_a_sample(golden: Golden) -> None:
    rules = golden.rules
    assert set(rules.tables.load("refused_fields.json")) == fields_with_rule(rules.table, REFUSED)
    assert set(rules.tables.load("dropped_fields.json")) == fields_with_rule(rules.table, DROPPED)


@pytest.mark.parametrize(("golden", "field"), _sample_cases("refused_fields.json"))
def test_refused_field_is_named_in_the_bad_request(golden: Golden, field: str) -> None:
    sample = golden.rules.tables.load("refused_fields.json")[field]
    assert_refused_field_is_named(golden.translate, {**golden.rules.refusal_body, field: sample}, field)


@pytest.mark.parametrize(("golden", "field"), _sample_cases("dropped_fields.json"))
def test_dropped_field_leaves_the_provider_request_unchanged(golden: Golden, field: str) -> None:
    sample = golden.rules.tables.load("dropped_fields.json")[field]
    assert golden.translate({**BASE_BODY, field: sample}) == golden.translate(BASE_BODY)


@pytest.mark.parametrize(("golden", "field"), _sample_cases("refused_fields.json"))
def test_null_refused_field_counts_as_absent(golden: Golden, field: str) -> None:
    assert golden.translate({**BASE_BODY, field: None}) == golden.translate(BASE_BODY)


@pytest.mark.parametrize(("golden", "case"), _table_cases("bad_requests.json"))
def test_untranslatable_request_is_refused_with_its_param(golden: Golden, case: dict) -> None:
    message = golden.rules.own_messages.get(case["name"], case["message"])
    assert_refused_with_param(golden.translate, {**BASE_BODY, **case["body"]}, case["param"], message)


@pytest.mark.parametrize(("golden", "case"), _table_cases("tool_choice_cases.json"))
def test_tool_choice_variants(golden: Golden, case: dict) -> None:
    body = {**BASE_BODY, "tools": golden.rules.tools}
    body |= {name: case[name] for name in ("tool_choice", "parallel_tool_calls") if name in case}
    translated = golden.translate(body)
    tool_choice, tool_names = golden.rules.tool_choice_of(translated)
    assert tool_choice == case["expected_tool_choice"]
    assert tool_names == case.get("expected_tools", ["get_weather", "get_time"])
    golden.valid_request(translated, False)


# --- answers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("golden", "case"), RESPONSE_CASES)
def test_response_translates_to_golden_chat_completion(golden: Golden, case: str) -> None:
    provider, expected = golden.response_pair(case)
    answer = golden.fixtures.load(provider)
    golden.valid_answer(answer)  # the fixture is a real answer of the provider
    translated = golden.translator.chat_response(answer, golden.model, CREATED)
    assert golden.normalise([translated]) == [golden.fixtures.load(expected)]
    assert_no_undeclared_keys(ChatCompletion.model_validate(translated), "completion", golden.openai_extensions)
    assert golden.usage_of(answer) == translated.get("usage")


def _with_stop_reasons() -> list[Golden]:
    return [golden for golden in GOLDENS if golden.stop_reasons is not None]


@pytest.mark.parametrize(("golden", "reason"), _each([
    (golden, reason) for golden in _with_stop_reasons() for reason in sorted(golden.fixtures.load(
        golden.stop_reasons.table))]))
def test_stop_reason_maps_to_finish_reason(golden: Golden, reason: str) -> None:
    stop_reasons = golden.stop_reasons
    answer = stop_reasons.put(golden.fixtures.load(golden.response_pair(stop_reasons.answer)[0]), reason)
    finish_reason = golden.translator.chat_response(answer, golden.model, CREATED)["choices"][0]["finish_reason"]
    assert finish_reason == golden.fixtures.load(stop_reasons.table)[reason]


@pytest.mark.parametrize("golden", _with_stop_reasons(), ids=str)
def test_every_provider_stop_reason_is_mapped(golden: Golden) -> None:
    assert set(golden.fixtures.load(golden.stop_reasons.table)) == golden.stop_reasons.sdk


# --- streams -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("golden", "case", "include_usage"), STREAM_CASES)
def test_stream_translates_to_golden_chunks(golden: Golden, case: str, include_usage: bool) -> None:
    for event in golden.provider_events(case):
        golden.valid_event(event)  # the fixture events are real events of the provider
    stream, chunks = golden.run_stream(case, include_usage)
    assert golden.normalise(chunks) == golden.expected_chunks(case, include_usage)
    assert_valid_chunks(chunks, golden.openai_extensions)
    assert stream.finished == ("error" not in chunks[-1]), "a stream either finishes or ends with an error"


def _usage_cases() -> list[object]:
    """Stream cases whose `.usage.sse` golden ends with a usage chunk."""
    cases = []
    for golden in GOLDENS:
        for case, usage in golden.stream_cases():
            if usage and "usage" in golden.expected_chunks(case, True)[-1] and not golden.expected_chunks(
                    case, True)[-1]["choices"]:
                cases.append((golden, case))
    return _each(cases)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(("golden", "case"), _usage_cases())
def test_usage_is_recorded_whether_or_not_the_client_asked(golden: Golden, case: str, include_usage: bool) -> None:
    stream, chunks = golden.run_stream(case, include_usage)
    assert stream.finished
    assert stream.usage == golden.expected_chunks(case, True)[-1]["usage"]
    assert all(("usage" in chunk) == include_usage for chunk in chunks)


@pytest.mark.parametrize("golden", GOLDENS, ids=str)
def test_malformed_stream_event_is_an_error(golden: Golden) -> None:
    stream = golden.translator.chat_stream(golden.model, CREATED, False)
    chunks = stream.feed(golden.malformed_event, b"{not json")
    assert len(chunks) == 1
    assert_error_envelope(chunks[0])
    assert stream.finish() == []
    assert not stream.finished


@pytest.mark.parametrize("golden", [golden for golden in GOLDENS if ("cut_early", False) in golden.stream_cases()],
                         ids=str)
def test_stream_cut_before_its_end_reports_an_error(golden: Golden) -> None:
    stream, chunks = golden.run_stream("cut_early", include_usage=False)
    assert not stream.finished
    assert_error_envelope(chunks[-1])
    assert f"ended before {stream.end_marker}" in chunks[-1]["error"]["message"]


@pytest.mark.parametrize("golden", [golden for golden in GOLDENS if golden.mid_stream_error], ids=str)
def test_nothing_follows_a_mid_stream_error(golden: Golden) -> None:
    failure = golden.mid_stream_error
    stream, chunks = golden.run_stream(failure.case, include_usage=True)
    assert_error_envelope(chunks[-1])
    assert not stream.finished
    assert feed_stream(stream, [failure.closing_event]) == []
    assert not stream.finished
    if failure.prompt_tokens is not None:
        assert stream.usage is not None and stream.usage["prompt_tokens"] == failure.prompt_tokens


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("golden", "case"), _each([
    (golden, case) for golden in GOLDENS for case in golden.fixtures.load("errors.json")]))
def test_error_response_maps_status_and_body(golden: Golden, case: dict) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = golden.translator.error_response(case["status"], body, case.get("headers"))
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)


@pytest.mark.parametrize("golden", GOLDENS, ids=str)
def test_error_messages_do_not_echo_unrecognised_bodies(golden: Golden) -> None:
    for body, secret in UNRECOGNISED_BODIES.items():
        status, error = golden.translator.error_response(502, body, None)
        assert status == 502
        assert_error_envelope(error)
        assert secret not in error["error"]["message"] and "SECRET" not in error["error"]["message"], body
