"""The build compiles Babelgate's own protos (protos/) with grpcio-tools into ext_proc/admin/; everything else is in
pyproject.toml. The generated files are build output: never edited, never committed."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROTOS = ROOT / "protos"
OUTPUT = ROOT / "ext_proc" / "admin"


def compile_protos() -> None:
    import grpc_tools
    from google.api import annotations_pb2
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(annotations_pb2.__file__).parent.parent.parent  # googleapis-common-protos ships the .proto too
    sources = sorted(str(p.relative_to(PROTOS / "babelgate" / "admin" / "v1"))
                     for p in (PROTOS / "babelgate" / "admin" / "v1").glob("*.proto"))
    arguments = ["grpc_tools.protoc", f"-I{PROTOS / 'babelgate' / 'admin' / 'v1'}", f"-I{well_known}",
                 f"-I{googleapis}", f"--python_out={OUTPUT}", f"--pyi_out={OUTPUT}",
                 f"--descriptor_set_out={OUTPUT / 'admin.pb'}", "--include_imports", *sources]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {sources}")


class BuildWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
