"""``cargohold audit`` end to end through typer's CliRunner: exit codes and formats."""

from __future__ import annotations

import json
import shutil

import pytest
from audit_helpers import DATA, recorded_reader
from typer.testing import CliRunner

from cargohold.audit import cluster
from cargohold.audit.catalog import RULES
from cargohold.audit.errors import ClusterError
from cargohold.cli.main import app

runner = CliRunner()


def invoke(*args: str, stdin: str | None = None):
    return runner.invoke(app, ["audit", *args], input=stdin)


def path(name: str) -> str:
    return str(DATA / name)


def test_clean_manifests_exit_zero() -> None:
    result = invoke(path("clean"))
    assert result.exit_code == 0, result.output
    assert "0 findings, 0 suppressed, 12 objects audited" in result.stdout


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("rules/ch009/bad.yaml", [], 1),  # high >= high (the default)
        ("rules/ch009/bad.yaml", ["--fail-on", "critical"], 0),
        ("rules/ch003/bad", ["--fail-on", "critical"], 1),
        ("rules/ch010/bad.yaml", [], 0),  # medium < high
        ("rules/ch010/bad.yaml", ["--fail-on", "medium"], 1),
        ("rules/ch012/bad.yaml", ["--fail-on", "low"], 0),  # info < low
        ("rules/ch012/bad.yaml", ["--fail-on", "info"], 1),
        ("rules/ch003/bad", ["--fail-on", "none"], 0),
        ("rules/ch009/bad.yaml", ["--ignore", "CH009"], 0),
    ],
)
def test_exit_code_follows_fail_on_and_ignores(name: str, args: list[str], code: int) -> None:
    result = invoke(path(name), *args)
    assert result.exit_code == code, result.output


def test_json_output_parses_and_names_file_and_line() -> None:
    result = invoke(path("rules/ch015/bad.yaml"), "-o", "json", "--fail-on", "medium")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["summary"]["failed"] is True
    assert [(f["rule"], f["object"]["name"], f["line"]) for f in data["findings"]] == [
        ("CH015", "blog", 15),
        ("CH015", "wiki", 46),
    ]
    assert data["findings"][0]["file"] == path("rules/ch015/bad.yaml")


def test_sarif_output_lists_all_rules_and_located_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(DATA)
    result = invoke("rules/ch001/bad.yaml", "-o", "sarif", "--fail-on", "none")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [r.id for r in RULES]
    regions = [
        (r["ruleId"], r["locations"][0]["physicalLocation"]["region"]["startLine"])
        for r in run["results"]
    ]
    assert regions == [("CH001", 9), ("CH001", 14), ("CH001", 27)]
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]
    }
    assert uris == {"rules/ch001/bad.yaml"}


def test_stdin_and_files_mix() -> None:
    text = (DATA / "rules/ch010/bad.yaml").read_text()
    result = invoke("-", path("rules/ch011/bad.yaml"), "-o", "json", stdin=text)
    data = json.loads(result.stdout)
    assert sorted((f["rule"], f["source"]) for f in data["findings"]) == [
        ("CH010", "<stdin>"),
        ("CH010", "<stdin>"),
        ("CH011", path("rules/ch011/bad.yaml")),
    ]


def test_table_output_on_a_bad_file() -> None:
    result = invoke(path("rules/ch004/bad.yaml"), "--no-advice")
    assert result.exit_code == 0
    out = result.stdout
    assert "MEDIUM (3)" in out
    assert "CH004 Non-root pod mounts a PVC without fsGroup" in out
    assert "fsGroup: 1000" in out
    assert "Decision matrix" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/app.yaml"], "error: /nonexistent/app.yaml: no such file or directory"),
        ([path("errors/broken.yaml")], "bad YAML: did not find expected ',' or ']'"),
        ([path("errors/broken.json")], "bad JSON: Expecting property name"),
        ([path("errors/latin1.yaml")], "not UTF-8 text"),
        ([], "error: nothing to audit"),
        ([path("clean"), "--ignore", "CH099"], "error: --ignore: unknown rule id CH099"),
        (
            ["--kustomize", "/proc/cargohold-no-such-dir"],
            "not a directory",
        ),  # /proc: nobody can create it
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_bad_option_values_are_usage_errors() -> None:
    assert invoke(path("clean"), "-o", "xml").exit_code == 2
    assert invoke(path("clean"), "--fail-on", "urgent").exit_code == 2


def test_warnings_go_to_stderr() -> None:
    result = invoke(path("errors/not-k8s.yaml"))
    assert result.exit_code == 0
    assert "warning: " in result.stderr and "document has no kind" in result.stderr
    assert "warning" not in result.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kustomize_overlay() -> None:
    result = invoke("--kustomize", path("kustomize/overlays/prod"), "-o", "json")
    assert result.exit_code == 1
    (finding,) = json.loads(result.stdout)["findings"]
    assert finding["rule"] == "CH009"
    assert finding["file"].endswith("kustomize/base/deployment.yaml")
    assert finding["line"] == 25


def test_cluster_mode_reads_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def connect(kubeconfig=None, context=None, settings=None):
        seen.update(kubeconfig=kubeconfig, context=context)
        return recorded_reader(failing={"list_replication_controller_for_all_namespaces": 403})

    monkeypatch.setattr(cluster, "connect", connect)
    result = invoke("--context", "prod", "--kubeconfig", "/tmp/kc", "-o", "json")
    assert seen == {"kubeconfig": "/tmp/kc", "context": "prod"}
    assert result.exit_code == 1  # CH001 and CH013 are high
    data = json.loads(result.stdout)
    assert data["summary"]["findings"] == 8
    assert {f["source"] for f in data["findings"]} == {"cluster:recorded"}
    assert all(f["file"] is None and f["line"] is None for f in data["findings"])
    assert "cannot list ReplicationController (403 Forbidden)" in result.stderr


def test_cluster_errors_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(kubeconfig=None, context=None, settings=None):
        raise ClusterError("cannot load kubeconfig: context 'nope' not found")

    monkeypatch.setattr(cluster, "connect", connect)
    result = invoke("--cluster")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: cannot load kubeconfig: context 'nope' not found"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_AUDIT_KUBECTL", "no-such-kubectl")
    result = invoke("--kustomize", path("kustomize/base"))
    assert result.exit_code == 2
    assert "no-such-kubectl not found on PATH" in result.stderr
    monkeypatch.setenv("CARGOHOLD_AUDIT_PAGE_SIZE", "0")
    result = invoke(path("clean"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: bad audit settings: CARGOHOLD_AUDIT_PAGE_SIZE: ")
