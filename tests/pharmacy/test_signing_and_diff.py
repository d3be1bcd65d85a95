"""``library sign|verify|diff`` from the command line, on real files and real keys."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from daemon.base.config import load_config
from daemon.base.errors import ConfigError
from daemon.cli import main
from daemon.core.parts import load_checked_library
from daemon.pharmacy.reload import LibraryRefused
from tests.pharmacy.harness import SHIPPED, Keys, variant


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_sign_then_verify_round_trip_and_any_changed_byte_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`library sign` writes LIB.sig (one base64 line); `verify` accepts it with the public key
    and exits 1 naming the failure once one byte of the library changed or another key is used."""
    keys = Keys.make(tmp_path)
    lib = write(tmp_path / "lib.toml", SHIPPED)
    assert main(["library", "sign", str(keys.private_path), str(lib)]) == 0
    sig = tmp_path / "lib.toml.sig"
    assert len(sig.read_text().strip()) == 88
    assert main(["library", "verify", str(keys.public_path), str(lib), str(sig)]) == 0
    assert "OK:" in capsys.readouterr().out
    write(lib, SHIPPED.replace(b"max = 3.0", b"max = 3.5", 1))
    assert main(["library", "verify", str(keys.public_path), str(lib), str(sig)]) == 1
    assert "does not verify" in capsys.readouterr().out
    other = Keys.make(tmp_path / "other")
    write(lib, SHIPPED)
    assert main(["library", "verify", str(other.public_path), str(lib), str(sig)]) == 1


def test_openssl_keys_work_as_documented(tmp_path: Path) -> None:
    """Keys made with `openssl genpkey -algorithm ed25519` / `openssl pkey -pubout` (the
    pharmacy guide's recipe) sign and verify."""
    key, pub = tmp_path / "k.pem", tmp_path / "p.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True)
    lib = write(tmp_path / "lib.toml", SHIPPED)
    assert main(["library", "sign", str(key), str(lib), "--out", str(tmp_path / "s")]) == 0
    assert main(["library", "verify", str(pub), str(lib), str(tmp_path / "s")]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not base64!!", "not valid base64"),
        ("AAAA", "3 bytes, an Ed25519 signature is 64"),
        ("A" * 400, "longer than 256"),
    ],
)
def test_malformed_signatures_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    keys = Keys.make(tmp_path)
    lib = write(tmp_path / "lib.toml", SHIPPED)
    sig = tmp_path / "bad.sig"
    sig.write_text(content)
    code = main(["library", "verify", str(keys.public_path), str(lib), str(sig)])
    out = capsys.readouterr()
    assert code == 1
    assert message in out.out + out.err


def test_a_private_key_is_not_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys.make(tmp_path)
    lib = write(tmp_path / "lib.toml", SHIPPED)
    code = main(["library", "verify", str(keys.private_path), str(lib), str(lib)])
    assert code == 1
    assert "SubjectPublicKeyInfo" in capsys.readouterr().err


def test_diff_lists_each_change_old_to_new_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changed limits, concentrations, diluents, a severity and an example, an added drug and
    a removed profile: one line each, per profile and drug; identical files print nothing."""
    old = write(tmp_path / "old.toml", SHIPPED)
    text = variant(version="2027.1.1", soft_max="0.8", hard_max="2.5")
    text = text.replace(b'  { value = 64, unit = "ug/mL", diluent = "D5W" },', b"", 1)
    new = write(tmp_path / "new.toml", text)
    assert main(["library", "diff", str(old), str(old)]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # the two header lines only
    assert main(["library", "diff", str(old), str(new), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    changes = {(c["profile"], c["drug"], c["field"]): (c["old"], c["new"]) for c in out["changes"]}
    assert changes[(None, None, "version")] == ("2026.12.1", "2027.1.1")
    assert changes[("adult-icu", "norepinephrine", "soft.max")] == ("1.0", "0.8")
    assert changes[("adult-icu", "norepinephrine", "hard.max")] == ("3.0", "2.5")
    unchanged = [c for c in out["changes"] if c["drug"] == "vasopressin"]
    assert unchanged == []
    conc = changes[("adult-icu", "norepinephrine", "concentrations")]
    assert len(conc[0]) == 4
    assert len(conc[1]) == 3
    assert out["new"]["version"] == "2027.1.1"


def test_diff_reports_added_and_removed_drugs_profiles_rules_and_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path / "old.toml", SHIPPED)
    text = SHIPPED.replace(b'id = "anaphylaxis"', b'id = "anaphylaxis-ed"', 1)
    text = text.replace(
        b'diluents = { allowed = ["D5W", "D5NS"]', b'diluents = { allowed = ["D5W"]', 1
    )
    text = text.replace(b"expect_rate = { value = 21.0", b"expect_rate = { value = 21.00", 1)
    new = write(tmp_path / "new.toml", text)
    assert main(["library", "diff", str(old), str(new)]) == 1
    lines = capsys.readouterr().out.splitlines()[2:]
    assert "anaphylaxis: profile removed" in lines
    assert "anaphylaxis-ed: profile added" in lines
    assert any(
        line.startswith("adult-icu / norepinephrine: diluents.allowed") and "->" in line
        for line in lines
    ), lines


def test_config_library_section_and_the_older_path_form(tmp_path: Path) -> None:
    """`library = "PATH"` still works; [library] with require_signature needs trusted_keys."""
    lib = write(tmp_path / "lib.toml", SHIPPED)
    old_form = tmp_path / "a.toml"
    old_form.write_text(f'gateway_id = "g"\nlibrary = "{lib}"\n')
    assert load_config(old_form).library.path == lib  # type: ignore[union-attr]
    bad = tmp_path / "b.toml"
    bad.write_text(f'gateway_id = "g"\n[library]\npath = "{lib}"\nrequire_signature = true\n')
    with pytest.raises(ConfigError, match=r"library\.trusted_keys: required"):
        load_config(bad)


def test_start_refuses_an_unsigned_library_when_signatures_are_required(tmp_path: Path) -> None:
    """With require_signature the daemon will not start on a library without a valid PATH.sig."""
    keys = Keys.make(tmp_path)
    lib = write(tmp_path / "lib.toml", SHIPPED)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'gateway_id = "g"\n[library]\npath = "{lib}"\nrequire_signature = true\n'
        f'trusted_keys = ["{keys.public_path}"]\n'
    )
    with pytest.raises(LibraryRefused, match="signature: required"):
        load_checked_library(load_config(cfg))
    (tmp_path / "lib.toml.sig").write_text(keys.sign(SHIPPED))
    assert load_checked_library(load_config(cfg)).version == "2026.12.1"
