"""`telemetry-keys`: keys issued into a project with scopes, straight in MongoDB."""

from __future__ import annotations

import json

import pytest
from telemetry_tools.keys import main
from telemetry_tools.servers import MongoServer

pytestmark = pytest.mark.integration


def keys(
    capsys: pytest.CaptureFixture[str], server: MongoServer, db: str, *argv: str
) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["--mongo-url", server.url, "--mongo-db", db, *argv])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_a_key_is_issued_into_a_project_with_its_scopes_and_listed_by_project(
    capsys: pytest.CaptureFixture[str], mongo_server: MongoServer, db_name: str
) -> None:
    code, out, err = keys(
        capsys, mongo_server, db_name, "issue", "--name", "wall display", "--scopes", "read"
    )
    assert code == 0 and "not shown again" in err
    issued = json.loads(out)
    assert issued["project_id"] == "default" and issued["scopes"] == ["read"]
    assert issued["api_key"].startswith("tk_")

    code, out, _ = keys(capsys, mongo_server, db_name, "list", "--project", "default")
    assert code == 0 and [json.loads(line)["key_id"] for line in out.splitlines()] == [
        issued["key_id"]
    ]
    assert "api_key" not in out and issued["api_key"] not in out
    code, out, _ = keys(capsys, mongo_server, db_name, "list", "--project", "prj-elsewhere")
    assert code == 0 and out == ""


def test_an_unknown_project_or_scope_is_refused_by_name(
    capsys: pytest.CaptureFixture[str], mongo_server: MongoServer, db_name: str
) -> None:
    code, out, err = keys(
        capsys, mongo_server, db_name, "issue", "--name", "x", "--project", "prj-nope"
    )
    assert code == 1 and out == "" and "no project 'prj-nope'" in err
    code, _, err = keys(capsys, mongo_server, db_name, "issue", "--name", "x", "--scopes", "write")
    assert code == 2 and "not scopes: 'write'" in err and "ingest, read, manage" in err
