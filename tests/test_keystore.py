"""The local keystore: permissions, customer-provided keys (clear and RSA-OAEP wrapped), versions."""

from __future__ import annotations

import base64
import io
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldcrypt import KeyMaterialError, KeyProviderError, Workspace
from fieldcrypt.cli import run
from fieldcrypt.keys.keystore import Keystore, parse_base64_key
from tests.catalogs import write_catalog

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
KEY = bytes(range(1, 33))
KEY_B64 = base64.b64encode(KEY).decode()


@pytest.fixture(autouse=True)
def acme_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's catalog: workspace `acme` in the test's folder (the commands pass --keystore)."""
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "ks.json"})
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- keystore file ----------------------------------------------------------------------


def test_keystore_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0)  # the most permissive umask must not loosen the keystore
    try:
        Keystore.create(tmp_path / "keys" / "keystore.json", "acme")
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "keys" / "keystore.json") == 0o600


def test_keystore_stays_owner_only_after_a_new_version(keystore_path: Path) -> None:
    Keystore.load(keystore_path).add_version()
    assert mode_of(keystore_path) == 0o600
    assert Keystore.load(keystore_path).current == 2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_keystore_accessible_by_group_or_others_is_refused(keystore_path: Path, mode: int) -> None:
    keystore_path.chmod(mode)
    with pytest.raises(KeyMaterialError, match=f"mode {mode:04o}") as raised:
        Keystore.load(keystore_path)
    assert str(keystore_path) in str(raised.value)
    assert "chmod 600" in str(raised.value)


def test_workspace_with_a_world_readable_keystore_refuses_before_touching_data(
    local_workspace: Workspace, keystore_path: Path, enable_at: Callable[..., object]
) -> None:
    enable_at(local_workspace, "users.email", "email")
    keystore_path.chmod(0o644)
    file = Path(local_workspace.store.full_path("users/date=2026-11-01/part-0.parquet"))
    before = file.read_bytes()
    fresh = Workspace(local_workspace.config, actor="test")  # a new run loads the keystore again
    with pytest.raises(KeyMaterialError, match="accessible by group or others"):
        fresh.protect("users", "2026-11-01")
    assert file.read_bytes() == before


def test_existing_keystore_is_never_overwritten(keystore_path: Path) -> None:
    before = keystore_path.read_bytes()
    with pytest.raises(KeyMaterialError, match="already exists"):
        Keystore.create(keystore_path, "acme")
    assert keystore_path.read_bytes() == before


def test_missing_keystore_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="fieldcrypt key init"):
        Keystore.load(tmp_path / "nope.json")


def test_corrupt_keystore_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    path.write_text('{"format": "fieldcrypt-keystore-v1", "key": "' + KEY_B64 + '"')
    path.chmod(0o600)
    with pytest.raises(KeyMaterialError, match="not a valid fieldcrypt keystore") as raised:
        Keystore.load(path)
    assert KEY_B64 not in str(raised.value)


def test_keystore_holding_a_short_key_is_refused(keystore_path: Path) -> None:
    text = keystore_path.read_text()
    stored = Keystore.load(keystore_path).key_for(1)
    keystore_path.write_text(text.replace(base64.b64encode(stored).decode(), base64.b64encode(stored[:31]).decode()))
    with pytest.raises(KeyMaterialError, match="exactly 32 bytes"):
        Keystore.load(keystore_path)


def test_keystore_repr_never_shows_key_bytes(keystore_path: Path) -> None:
    keystore = Keystore.load(keystore_path)
    key = keystore.key_for(1)
    shown = repr(keystore) + repr(list(keystore.versions.values()))
    for form in (key.hex(), base64.b64encode(key).decode(), repr(key)):
        assert form not in shown


def test_current_version_cannot_be_retired(keystore_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="refusing to retire the current version 1"):
        Keystore.load(keystore_path).retire(1)


def test_keystore_of_another_workspace_is_refused(
    tmp_path: Path, make_local_workspace: Callable[..., Workspace]
) -> None:
    from fieldcrypt import KeyConfig, WorkspaceConfig

    other = tmp_path / "other.json"
    Keystore.create(other, "globex")
    workspace = Workspace(WorkspaceConfig("acme", str(tmp_path / "lake"), KeyConfig("local", str(other))), actor="t")
    with pytest.raises(KeyProviderError, match="belongs to workspace 'globex', not 'acme'"):
        workspace.key_cache()


def test_lake_bound_to_one_master_key_refuses_another(tmp_path: Path, local_workspace: Workspace) -> None:
    from fieldcrypt import KeyConfig, WorkspaceConfig

    bound = local_workspace.key_cache().master_key.ref
    other = tmp_path / "other.json"
    Keystore.create(other, "acme")
    config = WorkspaceConfig("acme", local_workspace.config.lake_uri, KeyConfig("local", str(other)))
    with pytest.raises(KeyProviderError, match=f"bound to master key {bound}"):
        Workspace(config, actor="t").key_cache()


# -- customer key in the clear (base64) ---------------------------------------------------


def test_base64_customer_key_of_32_bytes_is_accepted() -> None:
    assert parse_base64_key(KEY_B64) == KEY


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_one_trailing_newline_is_accepted(ending: str) -> None:
    assert parse_base64_key(KEY_B64 + ending) == KEY


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (base64.b64encode(bytes(31)).decode(), "exactly 32 bytes (256 bits), got 31"),
        (base64.b64encode(bytes(33)).decode(), "exactly 32 bytes (256 bits), got 33"),
        (base64.b64encode(bytes(16)).decode(), "exactly 32 bytes (256 bits), got 16"),
        ("", "empty"),
        ("\n", "empty"),
        ("not base64 at all!" * 3, "whitespace"),
        ("*" * 44, "not valid base64"),
        (KEY_B64.rstrip("="), "not valid base64 (bad character or padding)"),
        (KEY_B64[:20] + " " + KEY_B64[20:], "contains whitespace"),
        (KEY_B64[:20] + "\t" + KEY_B64[20:], "contains whitespace"),
        (KEY_B64[:20] + "\n" + KEY_B64[20:], "contains whitespace"),
        (" " + KEY_B64, "contains whitespace"),
        (KEY_B64 + " ", "contains whitespace"),
        (KEY_B64 + "\n\n", "contains whitespace"),
        (KEY_B64[:20] + "\u00a0" + KEY_B64[20:], "contains whitespace"),
        (base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "URL-safe base64 alphabet"),
    ],
    ids=[
        "31-bytes",
        "33-bytes",
        "16-bytes",
        "empty",
        "only-newline",
        "words",
        "bad-characters",
        "missing-padding",
        "embedded-space",
        "embedded-tab",
        "embedded-newline",
        "leading-space",
        "trailing-space",
        "two-trailing-newlines",
        "non-breaking-space",
        "url-safe",
    ],
)
def test_malformed_customer_key_is_refused_with_its_problem(text: str, problem: str) -> None:
    with pytest.raises(KeyMaterialError, match=problem.replace("(", r"\(").replace(")", r"\)")) as raised:
        parse_base64_key(text)
    if text.strip():
        assert text.strip() not in str(raised.value)


def test_customer_key_import_through_the_cli_creates_an_owner_only_keystore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keystore.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY_B64 + "\n"))
    assert run(["--workspace", "acme", "--keystore", str(path), "key", "import"]) == 0
    keystore = Keystore.load(path)
    assert keystore.key_for(1) == KEY
    assert keystore.versions[1].origin == "imported"
    assert mode_of(path) == 0o600
    assert KEY_B64 not in capsys.readouterr().out


def test_malformed_customer_key_through_the_cli_exits_with_the_problem_and_no_keystore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fieldcrypt.cli import main

    path = tmp_path / "keystore.json"
    short = base64.b64encode(bytes(range(31))).decode()
    monkeypatch.setattr("sys.stdin", io.StringIO(short + "\n"))
    with pytest.raises(SystemExit) as exited:
        main(["--workspace", "acme", "--keystore", str(path), "key", "import"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "exactly 32 bytes" in err and "got 31" in err
    assert short not in err
    assert not path.exists()


# -- customer key wrapped with RSA-OAEP-SHA256 (openssl) ------------------------------------


@pytest.fixture(scope="module")
def wrapping_keys(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two exported wrapping keys (`fieldcrypt key wrapping-key`); each folder holds the
    public PEM and the private half the platform keeps next to its keystore."""
    folders = []
    for name in ("first", "second"):
        folder = tmp_path_factory.mktemp(name)
        keystore = folder / "keystore.json"
        local = {"provider": "local", "keystore": "ks.json"}
        catalog = write_catalog(folder / "fieldcrypt.yaml", "acme", "lake", local)
        run(
            [
                "--catalog",
                str(catalog),
                "--workspace",
                "acme",
                "--keystore",
                str(keystore),
                "key",
                "wrapping-key",
                "--out",
                str(folder / "pub.pem"),
            ]
        )
        folders.append(folder)
    return folders


@pytest.fixture
def platform(wrapping_keys: list[Path], tmp_path: Path) -> Path:
    """A fresh platform folder holding the first wrapping key pair and no keystore yet."""
    folder = tmp_path / "platform"
    shutil.copytree(wrapping_keys[0], folder)
    return folder


def openssl_wrap(public_pem: Path, key: bytes, out: Path, digest: str | None = "sha256") -> Path:
    """What a customer runs: RSA-OAEP wrap of their key with the exported public key."""
    assert OPENSSL is not None
    plain = out.with_suffix(".bin")
    plain.write_bytes(key)
    command = [OPENSSL, "pkeyutl", "-encrypt", "-pubin", "-inkey", str(public_pem), "-pkeyopt", "rsa_padding_mode:oaep"]
    if digest:
        command += ["-pkeyopt", f"rsa_oaep_md:{digest}", "-pkeyopt", f"rsa_mgf1_md:{digest}"]
    subprocess.run([*command, "-in", str(plain), "-out", str(out)], check=True, capture_output=True)
    plain.unlink()
    return out


def import_wrapped(platform: Path, wrapped: Path) -> int:
    keystore = platform / "keystore.json"
    return run(["--workspace", "acme", "--keystore", str(keystore), "key", "import", "--wrapped", str(wrapped)])


def test_exported_wrapping_key_keeps_its_private_half_owner_only(wrapping_keys: list[Path]) -> None:
    private = wrapping_keys[0] / "keystore.json.wrapping-key.pem"
    assert mode_of(private) == 0o600
    assert (wrapping_keys[0] / "pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")


@needs_openssl
def test_customer_key_wrapped_with_openssl_rsa_oaep_sha256_is_imported(platform: Path, tmp_path: Path) -> None:
    customer_key = os.urandom(32)
    wrapped = openssl_wrap(platform / "pub.pem", customer_key, tmp_path / "key.wrapped")
    assert import_wrapped(platform, wrapped) == 0
    keystore = Keystore.load(platform / "keystore.json")
    assert keystore.key_for(1) == customer_key
    assert keystore.versions[1].origin == "imported-wrapped"
    assert mode_of(platform / "keystore.json") == 0o600
    assert not (platform / "keystore.json.wrapping-key.pem").exists()  # used once, then dropped


@needs_openssl
def test_customer_key_wrapped_with_the_wrong_public_key_is_refused(
    platform: Path, wrapping_keys: list[Path], tmp_path: Path
) -> None:
    wrapped = openssl_wrap(wrapping_keys[1] / "pub.pem", os.urandom(32), tmp_path / "key.wrapped")
    with pytest.raises(KeyMaterialError, match="did not decrypt with the wrapping key"):
        import_wrapped(platform, wrapped)
    assert not (platform / "keystore.json").exists()


@needs_openssl
def test_customer_key_wrapped_with_oaep_sha1_is_refused(platform: Path, tmp_path: Path) -> None:
    wrapped = openssl_wrap(platform / "pub.pem", os.urandom(32), tmp_path / "key.wrapped", digest="sha1")
    with pytest.raises(KeyMaterialError, match="not RSA-OAEP with SHA-256"):
        import_wrapped(platform, wrapped)
    assert not (platform / "keystore.json").exists()


@needs_openssl
@pytest.mark.parametrize("size", [31, 33])
def test_wrapped_customer_key_of_the_wrong_length_is_refused(platform: Path, tmp_path: Path, size: int) -> None:
    wrapped = openssl_wrap(platform / "pub.pem", os.urandom(size), tmp_path / "key.wrapped")
    with pytest.raises(KeyMaterialError, match=f"exactly 32 bytes \\(256 bits\\), got {size}"):
        import_wrapped(platform, wrapped)
    assert not (platform / "keystore.json").exists()


def test_truncated_wrapped_customer_key_is_refused(platform: Path, tmp_path: Path) -> None:
    wrapped = tmp_path / "key.wrapped"
    wrapped.write_bytes(os.urandom(100))
    with pytest.raises(KeyMaterialError, match="wrapped customer key is 100 bytes; RSA-4096 OAEP output is 512"):
        import_wrapped(platform, wrapped)


def test_wrapped_import_without_an_exported_wrapping_key_is_refused(tmp_path: Path) -> None:
    wrapped = tmp_path / "key.wrapped"
    wrapped.write_bytes(os.urandom(512))
    with pytest.raises(KeyMaterialError, match="fieldcrypt key wrapping-key"):
        import_wrapped(tmp_path, wrapped)
