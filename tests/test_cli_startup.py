"""The command line starts without heavy imports, and a closed pipe ends it quietly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("torch", "sklearn", "librosa", "matplotlib")


def test_building_the_parser_imports_nothing_heavy():
    script = textwrap.dedent(f"""
        import sys
        import serlib.cli
        serlib.cli.build_parser()
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print(",".join(loaded) or "none")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"


def test_every_command_help_imports_nothing_heavy():
    script = textwrap.dedent(f"""
        import contextlib, io, sys
        import serlib.cli
        for command in serlib.cli.COMMANDS:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                serlib.cli.main([command, "--help"])
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print(",".join(loaded) or "none")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"


def test_broken_pipe_ends_quietly(synthetic_root, tmp_path):
    # like `serlib select ... | head -0`: the reader is gone before the command prints
    command = [sys.executable, "-m", "serlib", "select", "--iemocap", str(synthetic_root),
               "--out", str(tmp_path / "sel.csv"), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
    assert (tmp_path / "sel.csv").is_file()
