"""The build compiles Babelgate's protos (protos/) with grpcio-tools into packages of its own; everything else is in
pyproject.toml. The generated files are build output: never edited, never committed.

- protos/babelgate/admin/v1 -> ext_proc/admin: the admin API (and admin.pb, the descriptor set Envoy's gRPC-JSON
  transcoder loads).
- protos/babelgate/envoy/v3 -> ext_proc/wire: the ext_proc protocol's messages, declared under Babelgate's own proto
  package so that no other distribution's copy of Envoy's protos (and no shared `envoy/` directory) is needed.

protoc names a generated module's imports after the .proto's directory (`from babelgate.envoy.v3 import base_pb2`);
those are rewritten to relative imports, so nothing is installed under a top-level `babelgate` name either.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROTOS = ROOT / "protos"
PACKAGES = {  # proto directory (under protos/) -> the Python package its modules go to
    "babelgate/admin/v1": ROOT / "ext_proc" / "admin",
    "babelgate/envoy/v3": ROOT / "ext_proc" / "wire",
}
DESCRIPTOR_SETS = {"babelgate/admin/v1": "admin.pb"}


def compile_protos() -> None:
    import grpc_tools
    from google.api import annotations_pb2
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(annotations_pb2.__file__).parent.parent.parent  # googleapis-common-protos ships the .proto too
    for directory, package in PACKAGES.items():
        sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / directory).glob("*.proto"))
        with tempfile.TemporaryDirectory() as scratch:
            arguments = ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{well_known}", f"-I{googleapis}",
                         f"--python_out={scratch}", f"--pyi_out={scratch}"]
            if directory in DESCRIPTOR_SETS:
                arguments += [f"--descriptor_set_out={package / DESCRIPTOR_SETS[directory]}", "--include_imports"]
            if protoc.main([*arguments, *sources]) != 0:
                raise RuntimeError(f"protoc failed on {sources}")
            package.mkdir(exist_ok=True)
            for generated in sorted((Path(scratch) / directory).iterdir()):
                text = generated.read_text()
                text = re.sub(rf"^from {re.escape(directory.replace('/', '.'))} import ", "from . import ", text,
                              flags=re.MULTILINE)
                (package / generated.name).write_text(text)


class BuildWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
