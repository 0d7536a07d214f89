"""Training stages re-exec themselves once with glibc told to keep freed memory."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.core.launch import FAST_ALLOCATOR

SCRIPT = """
import json, os, sys
from pipeline.core.launch import ensure_fast_allocator
print("start", flush=True)
ensure_fast_allocator(sys.argv)
print(json.dumps({k: os.environ.get(k) for k in KEYS} | {"argv": sys.argv[1:]}))
""".replace("KEYS", repr(list(FAST_ALLOCATOR)))


def _run(tmp_path, env_extra: dict) -> tuple[list[str], dict]:
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in FAST_ALLOCATOR}
    env.pop("STARS_DEFAULT_ALLOCATOR", None)
    out = subprocess.run([sys.executable, str(script), "--data", "x y"], env={**env, **env_extra},
                         capture_output=True, text=True, check=True, timeout=60)
    lines = out.stdout.splitlines()
    return lines, json.loads(lines[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_stage_reexecs_once_with_the_fast_allocator_and_same_arguments(tmp_path):
    lines, seen = _run(tmp_path, {})
    assert lines.count("start") == 2  # the original process, then the re-exec'd one
    assert {k: seen[k] for k in FAST_ALLOCATOR} == FAST_ALLOCATOR
    assert seen["argv"] == ["--data", "x y"]


def test_user_settings_and_opt_out_are_respected(tmp_path):
    lines, seen = _run(tmp_path, {"STARS_DEFAULT_ALLOCATOR": "1"})
    assert lines.count("start") == 1 and all(seen[k] is None for k in FAST_ALLOCATOR)
    both = {k: "1" for k in FAST_ALLOCATOR}
    lines, seen = _run(tmp_path, both)
    assert lines.count("start") == 1 and {k: seen[k] for k in FAST_ALLOCATOR} == both
