"""The scripts in examples/ run as documented: each as its own process, output checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60
CONTINUE = '{"continue": true}'


def run_example(
    name: str,
    *args: str,
    cwd: Path,
    stdin: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MPM_EVENTS_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=TIMEOUT,
        check=False,
    )


def test_every_example_is_listed_in_its_readme():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == [
        "basic_setup.py",
        "custom_consumer.py",
        "hook_handler.py",
        "testing_with_recording_bus.py",
    ]
    listed = set(re.findall(r"\(([a-z_]+\.py)\)", (EXAMPLES / "README.md").read_text()))
    assert listed == set(scripts)


def test_basic_setup_logs_both_events_to_the_file(tmp_path):
    log = tmp_path / "events.log"
    proc = run_example("basic_setup.py", str(log), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["published 2 events", f"log: {log}"]
    text = log.read_text()
    headers = [line for line in text.splitlines() if line.startswith("INFO [")]
    assert [h.split(" (id=")[0] for h in headers] == [
        "INFO [hook.response] AssistantResponse",
        "INFO [hook.tool] ToolUse",
    ]
    assert all(h.endswith(", source=hook_handler)") for h in headers)
    assert '"model": "claude-3"' in text
    assert '"file_path": "/path/to/file"' in text
    assert '"result": "File contents"' in text


def test_basic_setup_defaults_to_a_temp_log_file(tmp_path):
    proc = run_example("basic_setup.py", cwd=tmp_path, env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("log: ")
    log = Path(last.removeprefix("log: "))
    assert log.parent == tmp_path
    assert "[hook.tool] ToolUse" in log.read_text()


def test_custom_consumer_sees_only_system_events(tmp_path):
    proc = run_example("custom_consumer.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Processing: system.lifecycle.startup - ServiceStartup",
        "Processing: system.health - HealthStatus",
        "Processing: system.config - ConfigChange",
        "CustomConsumer processed 3, failed 0",
        "CustomConsumer shut down after 3 events",
    ]


@pytest.mark.parametrize(
    ("hook", "header"),
    [
        (
            {
                "hook_event_name": "PreToolUse",
                "session_id": "session-42",
                "cwd": "/repo",
                "tool_name": "Read",
                "tool_input": {"file_path": "/repo/README.md"},
            },
            "[hook.tool] PreToolUse",
        ),
        (
            {"hook_event_name": "UserPromptSubmit", "session_id": "s-7", "prompt": "hi"},
            "[hook.generic] UserPromptSubmit",
        ),
    ],
)
def test_hook_handler_publishes_the_hook_and_continues(tmp_path, hook, header):
    log = tmp_path / "hooks.log"
    proc = run_example(
        "hook_handler.py",
        cwd=tmp_path,
        stdin=json.dumps(hook),
        env={"MPM_EVENTS_HOOK_LOG": str(log)},
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout == CONTINUE + "\n"
    assert json.loads(proc.stdout) == {"continue": True}
    text = log.read_text()
    assert text.count(" INFO [hook.") == 1
    assert f"INFO {header} (id=" in text
    # The whole hook object is the event's payload.
    payload = json.loads(text[text.index("{") :])
    assert payload == hook


def test_hook_handler_appends_across_runs(tmp_path):
    log = tmp_path / "hooks.log"
    for tool in ("Read", "Edit"):
        hook = {"hook_event_name": "PostToolUse", "tool_name": tool, "session_id": "s"}
        proc = run_example(
            "hook_handler.py",
            cwd=tmp_path,
            stdin=json.dumps(hook),
            env={"MPM_EVENTS_HOOK_LOG": str(log)},
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, CONTINUE + "\n", "")
    text = log.read_text()
    assert text.count("[hook.tool] PostToolUse") == 2
    assert text.index('"Read"') < text.index('"Edit"')


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [
        ("", "stdin is not JSON"),
        ("{not json", "stdin is not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"tool_name": "Read"}', "no 'hook_event_name'"),
        ('{"hook_event_name": 3}', "no 'hook_event_name'"),
    ],
)
def test_hook_handler_bad_input_still_continues(tmp_path, stdin, reason):
    log = tmp_path / "hooks.log"
    proc = run_example(
        "hook_handler.py", cwd=tmp_path, stdin=stdin, env={"MPM_EVENTS_HOOK_LOG": str(log)}
    )
    assert proc.returncode == 0
    assert proc.stdout == CONTINUE + "\n"
    [error] = proc.stderr.splitlines()
    assert error.startswith("mpm-events hook handler: bad hook input: ")
    assert reason in error
    assert not log.exists()


def test_recording_bus_example_passes_its_checks(tmp_path):
    proc = run_example("testing_with_recording_bus.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "PASS check_results_are_published",
        "PASS check_a_refusing_bus_is_reported",
        "PASS check_consumers_receive_failures_only",
    ]


def readme_testing_example() -> str:
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme.split("\n## Testing your code\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Testing section"
    return match.group(1)


def test_readme_testing_example_passes_in_strict_mode(tmp_path):
    # An empty pytest.ini makes tmp_path the rootdir, so none of this project's
    # settings (asyncio_mode = "auto") apply: pytest-asyncio runs in its default mode.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_readme.py").write_text(readme_testing_example())
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_readme.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=TIMEOUT,
        check=False,
    )
    assert "mode=Mode.STRICT" in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_readme.py::test_tool_use_is_published PASSED" in proc.stdout
