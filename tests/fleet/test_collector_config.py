"""``fleet collect --config FILE``: the ``[broker]`` table is checked by the daemon's own
BrokerConfig, TLS files are opened before anything connects, the password never comes from
the file or the command line, and every problem is one line naming the flag or the key."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

import pytest

from daemon.cli.app import build_parser, main
from daemon.cli.collect_cmd import PASSWORD_ENV, build_config
from tests.fleet.tls_broker import make_client_certificate
from tests.security.test_broker_tls_acl import make_certificates

#: a DSN that cannot connect: a config problem must be reported before the database is tried
NO_DB = "host=/nonexistent port=1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a client certificate it signed, and the key of another one (not matching)."""
    directory = tmp_path_factory.mktemp("certs")
    ca, _crt, _key = make_certificates(directory)
    cert, key = make_client_certificate(directory, ca, "collector")
    _other, other_key = make_client_certificate(directory, ca, "other")
    return {"ca": ca, "cert": cert, "key": key, "other_key": other_key}


def _write(tmp_path: Path, text: str, name: str = "collector.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["fleet", "collect", *argv])


def _tls_file(tmp_path: Path, certs: dict[str, Path], url: str, **tls: Path) -> Path:
    files = {"ca_file": certs["ca"], "cert_file": certs["cert"], "key_file": certs["key"]} | tls
    lines = [f'{key} = "{path}"' for key, path in files.items()]
    return _write(
        tmp_path,
        f'postgres = "{NO_DB}"\n[broker]\nurl = "{url}"\n[broker.tls]\n' + "\n".join(lines),
    )


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command, expect exit 1 and one line on stderr; return that line."""
    assert main(["fleet", "collect", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("infusiond: error: ")
    assert "cannot connect to PostgreSQL" not in err  # found before connecting anywhere
    return err


def test_a_file_gives_everything_and_the_flags_override_it(
    tmp_path: Path, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    password = tmp_path / "mqtt-password"
    password.write_text("s3cret\n")
    path = _write(
        tmp_path,
        f"""
postgres = "dbname=fleet"
group = "ingest"
batch = 200
log_level = "warning"

[broker]
url = "mqtts://central.example:8884"
username = "fleet-collector"
password_file = "{password}"
client_id = "collector-a"
keepalive_s = 20

[broker.tls]
ca_file = "{certs["ca"]}"
cert_file = "{certs["cert"]}"
key_file = "{certs["key"]}"
""",
    )
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    config, level = build_config(_args("--config", str(path)))
    assert (config.host, config.port, config.dsn) == ("central.example", 8884, "dbname=fleet")
    assert (config.username, config.password) == ("fleet-collector", "s3cret")
    assert (config.client_id, config.group, config.batch_max, config.keepalive_s) == (
        "collector-a",
        "ingest",
        200,
        20,
    )
    assert level == "warning"
    assert isinstance(config.tls_context, ssl.SSLContext)
    assert config.tls_context.verify_mode == ssl.CERT_REQUIRED
    assert config.tls_context.check_hostname
    assert "s3cret" not in repr(config)

    flags = ("--client-id", "collector-b", "--group", "g2", "--batch", "50", "--postgres", "x=1")
    config, level = build_config(_args("--config", str(path), *flags, "--log-level", "debug"))
    assert (config.client_id, config.group, config.batch_max, config.dsn) == (
        "collector-b",
        "g2",
        50,
        "x=1",
    )
    assert level == "debug"


def test_the_flags_alone_still_work_and_plain_mqtt_has_no_tls() -> None:
    config, level = build_config(_args("--broker", "central:1884", "--postgres", "dbname=x"))
    assert (config.host, config.port, config.tls_context, level) == ("central", 1884, None, "info")
    assert config.client_id.startswith("infusiond-collector-")


def test_mqtts_without_a_tls_table_verifies_with_the_system_cas() -> None:
    config, _ = build_config(_args("--broker", "mqtts://central", "--postgres", "dbname=x"))
    assert config.port == 8883
    assert config.tls_context is not None
    assert config.tls_context.verify_mode == ssl.CERT_REQUIRED


def test_a_tls_table_with_an_mqtt_url_is_refused(
    tmp_path: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _tls_file(tmp_path, certs, "mqtt://central:1883")
    err = _refused(capsys, "--config", str(path))
    assert f"{path}: broker.tls: only valid with an mqtts:// url" in err
    # the same when the flag turns the file's mqtts:// into mqtt://
    path = _tls_file(tmp_path, certs, "mqtts://central")
    err = _refused(capsys, "--config", str(path), "--broker", "mqtt://central")
    assert "broker.tls: only valid with an mqtts:// url" in err


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"ca_file": Path("/nonexistent/ca.pem")}, "broker.tls.ca_file: Path does not point"),
        ({"ca_file": "directory"}, "broker.tls.ca_file: Path does not point to a file"),
        ({"ca_file": "garbage"}, "not a PEM CA bundle"),
        ({"key_file": "garbage"}, "not a PEM certificate and its unencrypted private key"),
        ({"key_file": "other_key"}, "KEY_VALUES_MISMATCH"),
        ({"cert_file": Path("/nonexistent/c.pem")}, "broker.tls.cert_file: Path does not"),
    ],
)
def test_unusable_tls_files_are_named_before_anything_connects(
    tmp_path: Path,
    certs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tls: dict[str, object],
    message: str,
) -> None:
    (tmp_path / "directory").mkdir()
    (tmp_path / "garbage").write_text("not a certificate\n")
    files = {
        key: value if isinstance(value, Path) else certs.get(str(value), tmp_path / str(value))
        for key, value in tls.items()
    }
    path = _tls_file(tmp_path, certs, "mqtts://central", **files)
    err = _refused(capsys, "--config", str(path))
    assert message in err
    assert str(next(iter(files.values()))) in err


def test_a_certificate_without_its_key_is_refused(
    tmp_path: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        f'[broker]\nurl = "mqtts://central"\n[broker.tls]\ncert_file = "{certs["cert"]}"\n',
    )
    err = _refused(capsys, "--config", str(path), "--postgres", NO_DB)
    assert "broker.tls.cert_file: cert_file and key_file go together" in err


def test_a_password_in_the_file_is_refused_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '[broker]\nurl = "mqtt://h"\nusername = "u"\npassword = "hunter2"\n')
    err = _refused(capsys, "--config", str(path), "--postgres", NO_DB)
    assert "broker.password: keep the password out of this file" in err
    assert "password_file" in err
    assert PASSWORD_ENV in err
    assert "hunter2" not in err


def test_the_password_comes_from_one_place_with_a_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    both = _write(
        tmp_path, f'[broker]\nurl = "mqtt://h"\nusername = "u"\npassword_file = "{secret}"\n'
    )
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    err = _refused(capsys, "--config", str(both), "--postgres", NO_DB)
    assert "broker.password_file: the password comes from one place" in err
    assert "from-env" not in err
    assert "from-file" not in err
    monkeypatch.delenv(PASSWORD_ENV)

    no_user = _write(
        tmp_path, f'[broker]\nurl = "mqtt://h"\npassword_file = "{secret}"\n', "no-user.toml"
    )
    err = _refused(capsys, "--config", str(no_user), "--postgres", NO_DB)
    assert "broker.username: required when a password is set" in err

    secret.write_text("")
    err = _refused(capsys, "--config", str(both), "--postgres", NO_DB)
    assert f"broker.password_file {secret}: is empty" in err


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        (
            '[broker]\nurl = "mqtt://h"\nprotocol = "3.1.1"\n',
            (),
            "broker.protocol: the collector needs MQTT 5",
        ),
        ('[broker]\nurl = "mqtt://h"\nuser = "u"\n', (), "broker.user: is not a known field"),
        ('postgres = "x"\n[broker]\nurl = "ws://h"\n', (), "broker.url: scheme must be one of"),
        ('[broker]\nurl = "mqtt://h"\nclient_id = "a b"\n', (), "broker.client_id: 1 to 64"),
        ('batch = 0\n[broker]\nurl = "mqtt://h"\n', (), "batch: must be >= 1"),
        ('[broker]\nurl = "mqtt://h"\n', ("--batch", "0"), "--batch 0: must be >= 1"),
        ('[broker]\nurl = "mqtt://h"\n', ("--group", "a/b"), "--group 'a/b': 1 to 64"),
        ("[broker]\nurl = ", (), "not valid TOML"),
        ('[broker]\nusername = "u"\n', (), "--broker URL (or [broker] url in the --config"),
    ],
)
def test_a_bad_key_is_named_as_the_file_or_the_flag_gave_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    flags: tuple[str, ...],
    message: str,
) -> None:
    path = _write(tmp_path, text)
    err = _refused(capsys, "--config", str(path), "--postgres", NO_DB, *flags)
    assert message in err


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert f"--config {missing}: not found" in _refused(capsys, "--config", str(missing))


def test_postgres_is_required_here_or_there(capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, "--broker", "mqtt://h")
    assert "--postgres DSN (or postgres in the --config file) is required" in err


def test_a_broker_key_that_is_not_a_table_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, 'broker = "mqtt://h"\n')
    err = _refused(capsys, "--config", str(path), "--broker", "mqtt://h", "--postgres", NO_DB)
    assert f"{path}: broker: must be a table ([broker])" in err
