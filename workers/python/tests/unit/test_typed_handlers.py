"""Typed workers (``taskgate-codegen --target python``): mypy refuses a handler that misuses its
payload, returns a wrong result, yields a wrong chunk or serves a misspelt request type, and
passes the right ones (``tests/typing/typed_worker.py``). Each wrong use is a file of its own,
checked together with the right one in one mypy run."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).resolve().parent
TYPING = HERE.parent / "typing"
SRC = HERE.parents[1] / "src"

HEADER = """\
from __future__ import annotations
from collections.abc import AsyncIterator
from taskgate_worker import Context, Final
from .taskgate_types import *
worker = TaskgateWorker()
"""

WRONG = {
    # A misspelt field of the payload.
    "misspelt_field": (
        """
        @worker.handler("text.wordcount")
        async def h(payload: TextWordcountPayload, ctx: Context) -> TextWordcountResult:
            n = len(payload["txt"])  # wrong
            return {"words": n, "lines": n, "chars": n}
        """,
        r'TypedDict "TextWordcountPayload" has no key "txt"',
    ),
    # A payload field used as another type.
    "field_type": (
        """
        @worker.handler("demo.countdown")
        async def h(payload: DemoCountdownPayload, ctx: Context) -> DemoCountdownResult:
            start: str = payload["from"]  # wrong
            return {"done": start == ""}
        """,
        r"Incompatible types in assignment",
    ),
    # A handler that declares another type's payload.
    "other_payload": (
        """
        @worker.handler("text.wordcount")  # wrong
        async def h(payload: DemoCountdownPayload, ctx: Context) -> TextWordcountResult:
            return {"words": 0, "lines": 0, "chars": 0}
        """,
        r"Argument 1 has incompatible type",
    ),
    # A wrong result.
    "wrong_result": (
        """
        @worker.handler("text.wordcount")
        async def h(payload: TextWordcountPayload, ctx: Context) -> TextWordcountResult:
            return {"words": 1}  # wrong
        """,
        r"Missing keys \(\"chars\", \"lines\"\)",
    ),
    # A wrong chunk.
    "wrong_chunk": (
        """
        @worker.handler("demo.countdown")
        async def h(payload: DemoCountdownPayload, ctx: Context) -> AsyncIterator[DemoCountdownChunk | Final[DemoCountdownResult]]:
            yield {"left": 1}  # wrong
        """,
        r'Incompatible types in "yield"',
    ),
    # A misspelt request type.
    "misspelt_type": (
        """
        @worker.handler("text.wordcounts")  # wrong
        async def h(payload: TextWordcountPayload, ctx: Context) -> TextWordcountResult:
            return {"words": 0, "lines": 0, "chars": 0}
        """,
        r"No overload variant of \"handler\"",
    ),
}


@pytest.mark.timeout(300)
def test_mypy_refuses_wrong_uses_of_the_generated_types_and_passes_the_right_ones(tmp_path: Path) -> None:
    package = tmp_path / "typed"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(TYPING / "taskgate_types.py", package / "taskgate_types.py")
    shutil.copy(TYPING / "typed_worker.py", package / "typed_worker.py")
    wrong_lines: dict[str, int] = {}
    for name, (body, _) in WRONG.items():
        text = HEADER + textwrap.dedent(body)
        (package / f"{name}.py").write_text(text)
        wrong_lines[name] = next(i for i, line in enumerate(text.splitlines(), 1) if "# wrong" in line)
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {SRC}\ncache_dir = {tmp_path / 'cache'}\n")
    stdout, stderr, status = api.run(["--config-file", str(config), str(package)])
    assert status == 1, f"mypy should fail:\n{stdout}{stderr}"
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if "typed_worker.py" in e or "taskgate_types.py" in e], stdout
    for name, (_, expected) in WRONG.items():
        found = [e for e in errors if f"{name}.py:" in e]
        assert found, f"mypy accepted {name}:\n{stdout}"
        assert any(re.search(expected, e) for e in found), f"{name}: {found}"
        lines = {int(e.split(":")[1]) for e in found}
        assert wrong_lines[name] in lines, f"{name}: the error is on the wrong line ({lines}): {found}"
