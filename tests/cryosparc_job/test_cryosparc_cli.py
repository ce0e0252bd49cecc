"""The cryodiscovery-cryosparc entry point: options, environment, exit codes, one-line
errors. Online runs go to the API test double; a fixed selector stands in for the model."""

from __future__ import annotations

import socket

import pytest
from cryodiscovery.cryosparc_job.cli import build_parser, main, server_config
from cryosparc_testdata import keep


def _err(capsys) -> str:
    """The error message: the last line of stderr, and the only one naming an error."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line.lower()]
    assert errors == [err[-1]], err
    assert not any("HTTP Request" in line for line in err)  # no per-request noise
    return err[-1]


def test_online_run_from_the_environment(env, fake, capsys):
    code = main(["--project", "P1", "--job", fake.uids["class2d"]], select=keep([1]))
    assert code == 0
    assert "to External job P1/J4" in capsys.readouterr().out
    assert fake.jobs[("P1", "J4")].status == "completed"


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (["--project", "P9", "--job", "J1"], 2, "project P9 not found"),
        (["--project", "P1", "--job", "J2"], 2, "not a 2D classification"),
    ],
)
def test_online_bad_input_exits_2(env, capsys, argv, code, text):
    assert main(argv, select=keep([1])) == code
    message = _err(capsys)
    assert message.startswith("cryodiscovery-cryosparc: error: ") and text in message


def test_wrong_password_exits_2(env, monkeypatch, capsys):
    monkeypatch.setenv("CRYOSPARC_PASSWORD", "nope")
    assert main(["--project", "P1", "--job", "J1"], select=keep([1])) == 2
    assert "rejected the credentials" in _err(capsys)


def test_unreachable_server_exits_1(monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CRYOSPARC_PASSWORD", "x")
    argv = [
        "--url",
        f"http://127.0.0.1:{port}",
        "--email",
        "a@b",
        "--project",
        "P1",
        "--job",
        "J1",
    ]
    assert main([*argv, "--timeout", "5"], select=keep([1])) == 1
    assert "cannot reach cryoSPARC" in _err(capsys)


def test_failure_during_the_run_exits_1_and_fails_the_job(env, fake, capsys):
    def broken(classes):
        raise RuntimeError("out of memory")

    assert main(["--project", "P1", "--job", "J1"], select=broken) == 1
    assert _err(capsys) == "cryodiscovery-cryosparc: error: RuntimeError: out of memory"
    assert fake.jobs[("P1", "J4")].status == "failed"


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        ([], "give --project and --job"),
        (["--job-dir", "x"], "--job-dir needs --out"),
        (["--job-dir", "x", "--out", "y", "--project", "P1"], "cannot be combined"),
        (["--job-dir", "x", "--out", "y", "--url", "http://h:1"], "with --url/--host"),
        (["--job-dir", "x", "--out", "y", "--host", "h"], "with --url/--host"),
        (["--project", "P1", "--job", "J1"], "give --url"),
    ],
)
def test_option_errors(monkeypatch, capsys, argv, text):
    monkeypatch.delenv("CRYOSPARC_BASE_URL", raising=False)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and text in capsys.readouterr().err


def test_secrets_come_from_the_environment_only(monkeypatch):
    monkeypatch.setenv("CRYOSPARC_PASSWORD", "s3cret")
    monkeypatch.setenv("CRYOSPARC_LICENSE_ID", "lic")
    parser = build_parser()
    for flag in ("--password", "--license"):
        assert flag not in parser.format_help()
    args = parser.parse_args(
        ["--host", "h", "--base-port", "61000", "--project", "P", "--job", "J"]
    )
    config = server_config(args)
    assert (config.password, config.license, config.base_url) == (
        "s3cret",
        "lic",
        "http://h:61000",
    )
    assert config.url is None


def test_help_is_the_module_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--job-dir /data/P3/J42" in out and "python -m cryosparc.tools login" in out


def test_offline_is_not_refused_for_a_server_in_the_environment(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("CRYOSPARC_BASE_URL", "http://h:39000")
    code = main(["--job-dir", str(tmp_path / "J9"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no such file or folder" in _err(capsys)


def test_online_out_into_a_cryosparc_job_folder_is_refused_first(
    env, fake, tmp_path, capsys
):
    """The local report folder is checked before anything is asked of the server."""
    other = tmp_path / "P1" / "J2"
    other.mkdir(parents=True)
    (other / "job.json").write_text('{"project_uid": "P1", "uid": "J2"}')
    jobs = set(fake.jobs)
    argv = ["--project", "P1", "--job", fake.uids["class2d"], "--out", str(other)]
    assert main(argv, select=keep([1])) == 2
    assert "job.json" in _err(capsys)
    assert set(fake.jobs) == jobs  # no External job made
    assert sorted(p.name for p in other.iterdir()) == ["job.json"]
