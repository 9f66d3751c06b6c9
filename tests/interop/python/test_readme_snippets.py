"""The "Calling it" snippets of docs/calling.md, run exactly as printed: documentation that cannot rot.

Each snippet is a fenced block whose first line is a marker comment (`# interop-test: grpcurl`,
`# interop-test: grpcurl-share`, `# interop-test: python-stubs`, `# interop-test: python`,
`// interop-test: node`). The blocks are taken from docs/calling.md verbatim and run with the environment
that page names (PRINTJOB_GATEWAY_TARGET, which the sidecar overlays give the app; TOKEN, PRINTER_ID or
SHARE_ID, PRINT_JOB_ID),
from the repository root (Node) or from a scratch directory that links proto/ (Python, whose stub
command writes into the current directory).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from conftest import REPO

# The page the README's "Calling it" links to; the README shows excerpts of these programs, which
# tests/it/docs.rs checks are lines of them.
CALLING = REPO / "docs" / "calling.md"
# Every marked block: a parser that finds fewer (a renamed marker, a moved section) must fail.
MARKERS = {
    "interop-test: grpcurl": "sh",
    "interop-test: grpcurl-share": "sh",
    "interop-test: python-stubs": "sh",
    "interop-test: python": "python",
    "interop-test: node": "js",
}
NODE_MODULES = REPO / "tests" / "interop" / "node" / "node_modules"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def marked_blocks():
    """Every fenced block of docs/calling.md's "Calling it" whose first line is an interop-test marker."""
    text = CALLING.read_text(encoding="utf-8")
    section = text.split("\n## Calling it\n", 1)
    assert len(section) == 2, "docs/calling.md has no '## Calling it' section"
    section = section[1].split("\n## ", 1)[0]
    return [
        (lang, body.splitlines()[0].strip().lstrip("#/ "), body)
        for lang, body in FENCE.findall(section)
        if body.splitlines() and "interop-test:" in body.splitlines()[0]
    ]


def snippet(language, marker):
    blocks = [body for lang, name, body in marked_blocks() if lang == language and name == marker]
    assert len(blocks) == 1, f"expected one ```{language} block marked {marker!r} in 'Calling it'"
    return blocks[0]


def test_every_snippet_is_found():
    # Five marked blocks, one per marker and none else: a parser that finds nothing fails here.
    found = sorted((name, lang) for lang, name, _ in marked_blocks())
    assert found == sorted((name, lang) for name, lang in MARKERS.items()), found


def run(command, cwd, **env):
    # Only the variables docs/calling.md names: not run.sh's GATEWAY.
    environment = {key: value for key, value in os.environ.items() if key != "GATEWAY"}
    environment.update(env)
    return subprocess.run(
        command,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


OUTCOMES = {
    # (PRINTER_ID or SHARE_ID, its value), PRINT_JOB_ID, exit code: what every snippet must print
    "ok": (("PRINTER_ID", "any-job-printer"), "readme-{language}", 0),
    # The built-in scenario's job 4 is canceled: Graph refuses the cancel (409), the job reads canceled.
    "already_canceled": (("PRINTER_ID", "printer-1"), "4", 0),
    "not_found": (("PRINTER_ID", "printer-1"), "no-such-job", 1),
    # Through printer shares: any-job-share shares any-job-printer, share-1 shares printer-1 (whose
    # job 4 is canceled: the refusal and the read both go through the share).
    "share_ok": (("SHARE_ID", "any-job-share"), "readme-share-{language}", 0),
    "share_already_canceled": (("SHARE_ID", "share-1"), "4", 0),
}


@pytest.fixture(scope="module")
def python_dir(tmp_path_factory):
    """A scratch directory with proto/ in it, where the page's stub command has run."""
    directory = tmp_path_factory.mktemp("readme-python")
    (directory / "proto").symlink_to(REPO / "proto", target_is_directory=True)
    result = run(["bash", "-euc", snippet("sh", "interop-test: python-stubs")], directory)
    assert result.returncode == 0, result.stderr
    assert (directory / "graph/print/v1/print_job_service_pb2_grpc.py").is_file()
    (directory / "cancel_job.py").write_text(snippet("python", "interop-test: python"))
    return directory


def snippet_command(language, python_dir, share):
    if language == "grpcurl":
        marker = "interop-test: grpcurl-share" if share else "interop-test: grpcurl"
        return ["bash", "-euc", snippet("sh", marker)], REPO, {}
    if language == "python":
        return ["python", "cancel_job.py"], python_dir, {}
    if language == "node":
        script = python_dir.parent / "cancel-job.js"
        script.write_text(snippet("js", "interop-test: node"))
        # The page's `npm install` is tests/interop/node's pinned node_modules here.
        return ["node", str(script)], REPO, {"NODE_PATH": str(NODE_MODULES)}
    raise AssertionError(language)


@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
@pytest.mark.parametrize("language", ["grpcurl", "python", "node"])
def test_snippet(language, outcome, python_dir, gateway):
    if language != "grpcurl":
        assert shutil.which("python" if language == "python" else "node")
    (parent_variable, parent_id), print_job_id, exit_code = OUTCOMES[outcome]
    share = parent_variable == "SHARE_ID"
    print_job_id = print_job_id.format(language=language)
    command, cwd, env = snippet_command(language, python_dir, share)
    result = run(
        command,
        cwd,
        PRINTJOB_GATEWAY_TARGET=gateway,
        TOKEN="readme-token",
        PRINT_JOB_ID=print_job_id,
        **{parent_variable: parent_id},
        **env,
    )
    output = result.stdout + result.stderr
    print(output)
    if language == "grpcurl":
        if outcome != "not_found":
            assert result.returncode == 0, output
            expected = {"alreadyCanceled": outcome.endswith("already_canceled")}
            assert json.loads(result.stdout) == expected, output
        else:
            assert result.returncode == 64 + 5, output
            assert "  Code: NotFound\n" in result.stderr
            assert '"graphErrorCode":"itemNotFound"' in result.stderr
        return
    assert result.returncode == exit_code, output
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"  request-id=[0-9a-f-]{36} client-request-id=[0-9a-f-]{36}", lines[1]), output
    if outcome != "not_found":
        already_canceled = "true" if outcome.endswith("already_canceled") else "false"
        where = f"share {parent_id}" if share else f"printer {parent_id}"
        assert lines[0] == (
            f"OK: canceled job {print_job_id} on {where} (already_canceled={already_canceled})"
        ), output
        assert len(lines) == 2, output
    else:
        assert lines[0].startswith("NOT_FOUND: "), output
        assert re.search(r"^  ErrorInfo: .*ITEM_NOT_FOUND.*itemNotFound", result.stdout, re.M), output
        assert re.search(r"^  RequestInfo: .*client-request-id=", result.stdout, re.M), output
