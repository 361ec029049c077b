"""The one shape every CLI mistake test checks: exit code 2, no traceback, exactly one `error:` line."""
from __future__ import annotations


def one_error_line(code: int, err: str) -> str:
    """Assert the CLI answered a user mistake as documented (docs/robustness.md) and return its `error:` line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]
