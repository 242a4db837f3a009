"""FileInput yields exactly the lines ``for line in open(path)`` gives, without endings."""

from __future__ import annotations

from pathlib import Path

import pytest

from regrow.pipeline.stages import FileInput

CASES = {
    "empty": b"",
    "one line, no ending": b"abc",
    "one line": b"abc\n",
    "empty lines": b"\n\n\na\n\n",
    "windows endings": b"a\r\nb\r\n\r\nc",
    "old mac endings": b"a\rb\r",
    "a line across chunks": b"x" * 10 + b"\n" + b"y" * 25 + b"\nz\n",
    "a line of several chunks, last": b"a\n" + b"q" * 100,
    "an ending on a chunk's edge": b"x" * 15 + b"\n" + b"y" * 15 + b"\r\n" + b"w",
    "not utf-8": b"caf\xe9\nna\xefve\n",
    "utf-8": "z\u00fcrich\nstra\u00dfe\n\u6771\u4eac\n".encode(),
}


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f]


@pytest.mark.parametrize("chunk", [4, 16, 1 << 16])
@pytest.mark.parametrize("name", list(CASES))
def test_lines_as_python_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, chunk: int
) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(CASES[name])
    monkeypatch.setattr(FileInput, "CHUNK", chunk)
    assert list(FileInput(str(path))) == _lines(path)


def test_a_file_can_be_read_twice(tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_text("a\nb\n")
    source = FileInput(str(path))
    assert list(source) == list(source) == ["a", "b"]
