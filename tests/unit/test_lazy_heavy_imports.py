"""A gateway process loads numpy, usearch, jsonschema and botocore only when its config or a request needs them:
each costs RSS in every ext_proc process (numpy with OpenBLAS ~16 MiB, botocore ~18 MiB), and most gateways have no
semantic route, no Bedrock backend, and see few `response_format` schemas."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "usearch", "jsonschema", "referencing", "regex", "botocore")


def loaded_after(code: str) -> set[str]:
    probe = (f"import sys\n{code}\n"
             f"print(' '.join(name for name in {HEAVY!r} if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_a_serving_process_without_semantic_routes_or_schemas_loads_none_of_them() -> None:
    assert loaded_after("import ext_proc.server, ext_proc.runtime.build, ext_proc.stages.attempt, "
                        "ext_proc.stages.response_cache") == set()


def test_the_first_schema_to_check_loads_the_validator() -> None:
    code = ("from ext_proc.stages.answer_schema import of_request\n"
            "schema = of_request({'response_format': {'type': 'json_schema', 'json_schema': {'name': 'x', "
            "'schema': {'type': 'object', 'required': ['a']}}}})\n"
            "assert schema.check_content('{}') is not None\n"
            "assert schema.check_content('{\"a\": 1}') is None")
    assert {"jsonschema", "regex"} <= loaded_after(code)


def test_a_json_object_request_needs_no_validator() -> None:
    code = ("from ext_proc.stages.answer_schema import of_request\n"
            "schema = of_request({'response_format': {'type': 'json_object'}})\n"
            "assert schema.check_content('[1]') is not None and schema.check_content('{}') is None")
    assert loaded_after(code) == set()


def test_the_first_bedrock_backend_loads_botocore() -> None:
    code = ("from ext_proc.auth.backend_credentials import credential_for\n"
            "from ext_proc.config.models import Backend\n"
            "backend = Backend.model_validate({'id': 'b', 'schema': 'bedrock-converse',\n"
            "                                  'aws': {'region': 'us-east-1'}})\n"
            "credential_for(backend, 'bedrock-api-key')")
    assert "botocore" in loaded_after(code)
