"""The pkcs11 key provider against a real SoftHSM2 token (package `softhsm2`, installed by .ci/run).

One token per test session in a temp SOFTHSM2_CONF (SoftHSM reads its config once per
process); each test makes its own key labels with scripts/softhsm_key.py, in a
subprocess, as an operator would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt import KeyConfig, Workspace, WorkspaceConfig
from fieldcrypt.engine.rotate import wrapped_key_refs
from fieldcrypt.errors import AccessDeniedError, ConfigError, IntegrityError, KeyProviderError, WrongMasterKeyError
from fieldcrypt.keys.providers.base import EncryptionContext
from fieldcrypt.keys.providers.pkcs11 import Pkcs11Provider, Pkcs11Settings, Pkcs11Token
from tests.catalogs import TEST_DATASETS
from tests.conftest import SAMPLE_DAY, WORKSPACE

MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
TOKEN = "fieldcrypt-test"
REMOVABLE_TOKEN = "fieldcrypt-removable"  # deleted by the one test of token removal
PIN_ENV = "FIELDCRYPT_TEST_HSM_PIN"
PIN = "test-user-pin-4821"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "softhsm_key.py"
PARTITION = SAMPLE_DAY.isoformat()


def _module() -> str:
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise RuntimeError("SoftHSM2 is not installed: .ci/run installs the softhsm2 package (apt-get install softhsm2)")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SoftHSM2 token in its own temp directory, initialised with softhsm2-util; yields the module path."""
    module = _module()
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    patch = pytest.MonkeyPatch()
    patch.setenv("SOFTHSM2_CONF", str(conf))
    patch.setenv(PIN_ENV, PIN)
    for label in (TOKEN, REMOVABLE_TOKEN):  # SoftHSM sees only the tokens present when it is first loaded
        subprocess.run(
            [shutil.which("softhsm2-util") or "softhsm2-util", "--init-token", "--free", "--label", label]
            + ["--so-pin", "so-pin-1337", "--pin", PIN],
            check=True,
            capture_output=True,
        )
    yield module
    patch.undo()


def _script(module: str, label: str, *extra: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--module",
            module,
            "--token",
            token,
            "--label",
            label,
            "--pin-env",
            PIN_ENV,
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def make_hsm_key(softhsm: str) -> Callable[[], str]:
    """A fresh key label in the token, created by the documented script."""

    def make() -> str:
        label = f"fc-master-{uuid.uuid4().hex[:8]}"
        _script(softhsm, label)
        return label

    return make


def _pkcs11_config(module: str, label: str, keystore: Path | None = None) -> KeyConfig:
    return KeyConfig(
        provider="pkcs11",
        keystore_path=str(keystore) if keystore else None,
        pkcs11_module=module,
        pkcs11_token=TOKEN,
        pkcs11_key_label=label,
        pkcs11_pin_env=PIN_ENV,
    )


@pytest.fixture
def make_hsm_workspace(tmp_path: Path, softhsm: str) -> Callable[..., Workspace]:
    def make(label: str, keystore: Path | None = None) -> Workspace:
        config = WorkspaceConfig(
            WORKSPACE, str(tmp_path / "lake"), _pkcs11_config(softhsm, label, keystore), datasets=TEST_DATASETS
        )
        return Workspace(config, actor="test")

    return make


def _enable_and_protect(workspace: Workspace) -> None:
    from tests.policy_support import backdate_policy

    workspace.enable("users.email", "email", acknowledge_irreversible=True)
    workspace.enable("users.phone", "last4", acknowledge_irreversible=True)
    backdate_policy(workspace)
    assert workspace.protect("users", PARTITION).newly_encrypted > 0


def _refs(workspace: Workspace) -> set[str]:
    (rel,) = workspace.files("users", PARTITION)
    attributes = workspace.policy().for_dataset("users")
    return set(wrapped_key_refs(workspace.store, rel, attributes).values())


def _revealed(workspace: Workspace) -> list[dict[str, Any]]:
    return [row for batch in workspace.reveal("users", PARTITION, ["email", "phone"]) for row in batch.to_pylist()]


def _provider(module: str, label: str) -> Pkcs11Provider:
    return Pkcs11Provider(Pkcs11Token.for_settings(Pkcs11Settings(module, TOKEN, pin_env=PIN_ENV)), label)


CONTEXT = EncryptionContext(WORKSPACE, "users", "email")


# -- the provider ------------------------------------------------------------------------


def test_data_key_round_trips_through_the_token(softhsm: str, make_hsm_key: Callable[[], str]) -> None:
    provider = _provider(softhsm, make_hsm_key())
    dek, wrapped = provider.generate_data_key(CONTEXT)
    assert provider.unwrap(wrapped, CONTEXT) == dek


def test_wrapped_key_is_bound_to_its_encryption_context(softhsm: str, make_hsm_key: Callable[[], str]) -> None:
    provider = _provider(softhsm, make_hsm_key())
    _, wrapped = provider.generate_data_key(CONTEXT)
    with pytest.raises(IntegrityError, match="failed authentication"):
        provider.unwrap(wrapped, EncryptionContext(WORKSPACE, "users", "phone"))


def test_wrapped_key_of_another_label_is_refused_before_the_token(
    softhsm: str, make_hsm_key: Callable[[], str]
) -> None:
    first, second = _provider(softhsm, make_hsm_key()), _provider(softhsm, make_hsm_key())
    _, wrapped = first.generate_data_key(CONTEXT)
    with pytest.raises(KeyProviderError, match="not a master key of this workspace"):
        second.unwrap(wrapped, CONTEXT)


def test_check_value_is_stable_and_differs_between_keys(softhsm: str, make_hsm_key: Callable[[], str]) -> None:
    first, second = _provider(softhsm, make_hsm_key()), _provider(softhsm, make_hsm_key())
    assert first.check_value() == first.check_value()
    assert first.check_value() != second.check_value()


def _bad_key(module: str, label: str, **attributes: bool) -> None:
    """A key made without the script's template (an operator's mistake), in a subprocess like the script."""
    code = f"""
import os, pkcs11
from pkcs11 import Attribute, KeyType
tok = pkcs11.lib({module!r}).get_token(token_label={TOKEN!r})
with tok.open(user_pin=os.environ[{PIN_ENV!r}], rw=True) as s:
    s.generate_key(KeyType.AES, 256, label={label!r}, store=True,
                   template={{getattr(Attribute, k): v for k, v in {attributes!r}.items()}})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_extractable_key_is_refused_naming_the_attribute(softhsm: str) -> None:
    label = f"fc-extractable-{uuid.uuid4().hex[:8]}"
    _bad_key(softhsm, label, SENSITIVE=True, EXTRACTABLE=True)
    with pytest.raises(KeyProviderError, match=f"{label}.*CKA_EXTRACTABLE is True, must be False"):
        _provider(softhsm, label)


def test_non_sensitive_key_is_refused_naming_the_attribute(softhsm: str) -> None:
    label = f"fc-plain-{uuid.uuid4().hex[:8]}"
    _bad_key(softhsm, label, SENSITIVE=False, EXTRACTABLE=False)
    with pytest.raises(KeyProviderError, match="CKA_SENSITIVE is False, must be True"):
        _provider(softhsm, label)


def test_key_without_decrypt_is_refused_naming_the_attribute(softhsm: str) -> None:
    label = f"fc-encrypt-only-{uuid.uuid4().hex[:8]}"
    _bad_key(softhsm, label, SENSITIVE=True, EXTRACTABLE=False, DECRYPT=False)
    with pytest.raises(KeyProviderError, match="CKA_DECRYPT is False, must be True"):
        _provider(softhsm, label)


def test_missing_key_label_is_access_denied_naming_token_and_label(softhsm: str) -> None:
    with pytest.raises(AccessDeniedError, match=f"'fc-never-made'.*'{TOKEN}'.*no such key"):
        _provider(softhsm, "fc-never-made")


def test_unknown_token_is_access_denied_naming_it(softhsm: str) -> None:
    token = Pkcs11Token.for_settings(Pkcs11Settings(softhsm, "no-such-token", pin_env=PIN_ENV))
    with pytest.raises(AccessDeniedError, match="'no-such-token'.*no token with this label"):
        Pkcs11Provider(token, "any")


def test_unset_pin_variable_is_a_config_error_naming_it(softhsm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIELDCRYPT_TEST_UNSET_PIN", raising=False)
    token = Pkcs11Token(Pkcs11Settings(softhsm, TOKEN, pin_env="FIELDCRYPT_TEST_UNSET_PIN"))
    with pytest.raises(ConfigError, match="PIN variable FIELDCRYPT_TEST_UNSET_PIN is not set"):
        Pkcs11Provider(token, "any")


def test_pin_source_is_required_in_the_key_config() -> None:
    with pytest.raises(ConfigError, match="exactly one of pin_env"):
        KeyConfig(provider="pkcs11", pkcs11_module="/x.so", pkcs11_token=TOKEN, pkcs11_key_label="k")


def test_session_is_reopened_in_a_forked_child(softhsm: str, make_hsm_key: Callable[[], str]) -> None:
    provider = _provider(softhsm, make_hsm_key())
    dek, wrapped = provider.generate_data_key(CONTEXT)  # the parent's session is open
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the inherited session is not usable; the provider must open its own
        os.close(read)
        try:
            ok = provider.unwrap(wrapped, CONTEXT) == dek
        except BaseException:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert provider.unwrap(wrapped, CONTEXT) == dek  # and the parent's still works


# -- the workspace -----------------------------------------------------------------------


def test_workspace_protects_and_verifies_under_an_hsm_key(
    make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    label = make_hsm_key()
    workspace = make_hsm_workspace(label)
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=120, events=10)
    _enable_and_protect(workspace)
    assert _refs(workspace) == {label}
    assert workspace.verify("users", PARTITION)["users.email"] > 0


def test_binding_records_the_hsm_key_check_value(
    softhsm: str, make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    label = make_hsm_key()
    workspace = make_hsm_workspace(label)
    workspace.key_cache()
    binding = workspace.bindings.load()
    assert binding is not None
    assert binding.check_values[label] == _provider(softhsm, label).check_value()


def test_key_recreated_under_the_same_label_is_a_wrong_master_key(
    softhsm: str, make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    label = make_hsm_key()
    make_hsm_workspace(label).key_cache()
    _script(softhsm, label, "--delete", "--yes")
    _script(softhsm, label)  # another key, same label
    with pytest.raises(WrongMasterKeyError, match=f"pkcs11 key '{label}'.*key check value"):
        make_hsm_workspace(label).key_cache()


def test_deleted_key_is_access_denied_naming_token_and_label(
    softhsm: str, make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    label = make_hsm_key()
    workspace = make_hsm_workspace(label)
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=50, events=10)
    _enable_and_protect(workspace)
    _script(softhsm, label, "--delete", "--yes")  # revocation
    with pytest.raises(AccessDeniedError, match=f"'{label}' on token '{TOKEN}'"):
        _revealed(make_hsm_workspace(label))


def test_removed_token_is_access_denied_naming_token_and_label(softhsm: str) -> None:
    label = f"fc-master-{uuid.uuid4().hex[:8]}"
    _script(softhsm, label, token=REMOVABLE_TOKEN)
    token = Pkcs11Token.for_settings(Pkcs11Settings(softhsm, REMOVABLE_TOKEN, pin_env=PIN_ENV))
    provider = Pkcs11Provider(token, label)
    _, wrapped = provider.generate_data_key(CONTEXT)
    subprocess.run(["softhsm2-util", "--delete-token", "--token", REMOVABLE_TOKEN], check=True, capture_output=True)
    with pytest.raises(AccessDeniedError, match=f"'{label}' on token '{REMOVABLE_TOKEN}'"):
        provider.unwrap(wrapped, CONTEXT)


def test_rotation_from_local_to_hsm_rewraps_every_data_key(
    make_local_workspace: Callable[..., Workspace],
    make_hsm_workspace: Callable[..., Workspace],
    make_hsm_key: Callable[[], str],
    keystore_path: Path,
) -> None:
    local = make_local_workspace()
    land_sample_lake(local.store, SAMPLE_DAY, 1, users=80, events=10)
    _enable_and_protect(local)
    before = _revealed(local)
    label = make_hsm_key()
    hsm = make_hsm_workspace(label, keystore=keystore_path)
    campaign = hsm.start_rotation(f"pkcs11:{label}")
    assert (campaign.old.provider, campaign.new.provider, campaign.new.key_id) == ("local", "pkcs11", label)
    hsm.rotate("users", PARTITION)
    hsm.complete_rotation()
    assert _refs(hsm) == {label}
    assert _revealed(make_hsm_workspace(label)) == before  # no keystore needed any more


def test_rotation_to_a_new_hsm_key_label_rewraps_every_data_key(
    make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    old, new = make_hsm_key(), make_hsm_key()
    workspace = make_hsm_workspace(old)
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=80, events=10)
    _enable_and_protect(workspace)
    before = _revealed(workspace)
    workspace.start_rotation(f"pkcs11:{new}")
    workspace.rotate("users", PARTITION)
    workspace.complete_rotation()
    assert _refs(workspace) == {new}
    assert _revealed(make_hsm_workspace(new)) == before


def test_workspace_still_configured_with_a_rotated_out_label_is_told_to_configure_the_current_one(
    make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    old, new = make_hsm_key(), make_hsm_key()
    workspace = make_hsm_workspace(old)
    workspace.key_cache()
    workspace.start_rotation(f"pkcs11:{new}")
    workspace.complete_rotation()
    with pytest.raises(KeyProviderError, match="it was rotated out by .*configure the current key instead"):
        make_hsm_workspace(old).key_cache()


def test_hsm_workspace_on_a_local_bound_lake_names_the_rotation_to_run(
    make_local_workspace: Callable[..., Workspace],
    make_hsm_workspace: Callable[..., Workspace],
    make_hsm_key: Callable[[], str],
) -> None:
    make_local_workspace().key_cache()
    label = make_hsm_key()
    with pytest.raises(KeyProviderError, match=f"rotate start --to pkcs11:{label}"):
        make_hsm_workspace(label).key_cache()


# -- the catalog -------------------------------------------------------------------------

PKCS11_ENTRY = {
    "provider": "pkcs11",
    "module": "/usr/lib/softhsm/libsofthsm2.so",
    "token": TOKEN,
    "key_label": "fc-master-1",
    "pin_env": PIN_ENV,
}


def _catalog(tmp_path: Path, key: dict[str, Any]) -> Path:
    import yaml

    from tests.catalogs import demo_datasets_yaml

    path = tmp_path / "fieldcrypt.yaml"
    doc = {"workspaces": {"acme": {"lake": "lake", "key": key, "datasets": demo_datasets_yaml()}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_catalog_pkcs11_key_becomes_the_key_config(tmp_path: Path) -> None:
    from fieldcrypt.catalog import Catalog

    key = Catalog.load(_catalog(tmp_path, PKCS11_ENTRY), environ={}).workspace_config().key
    assert (key.provider, key.pkcs11_token, key.pkcs11_key_label, key.pkcs11_pin_env) == (
        "pkcs11",
        TOKEN,
        "fc-master-1",
        PIN_ENV,
    )


def test_catalog_refuses_a_pin_written_in_the_clear(tmp_path: Path) -> None:
    from fieldcrypt.catalog import Catalog

    with pytest.raises(ConfigError, match=r"workspaces\.acme\.key\.pin: Extra inputs are not permitted"):
        Catalog.load(_catalog(tmp_path, {**PKCS11_ENTRY, "pin": "1234"}), environ={})


def test_catalog_pkcs11_key_needs_a_pin_source(tmp_path: Path) -> None:
    from fieldcrypt.catalog import Catalog

    without = {k: v for k, v in PKCS11_ENTRY.items() if k != "pin_env"}
    with pytest.raises(ConfigError, match="exactly one of pin_env"):
        Catalog.load(_catalog(tmp_path, without), environ={})


# -- docs/FORMAT.md ----------------------------------------------------------------------

_STANDALONE = """
import hashlib, json, os, sys
import pkcs11
from tests.test_format_doc import standalone_decryptor
module, token, path, workspace = sys.argv[1:5]
session = pkcs11.lib(module).get_token(token_label=token).open(user_pin=os.environ[{pin_env!r}])
out = standalone_decryptor()["decrypt_column"](path, workspace, "users", "email", primary_key="user_id",
                                               pkcs11=(session, token))
# only a digest leaves this process: plaintext never reaches test output
print(len(out), hashlib.sha256(json.dumps(sorted(out.items())).encode()).hexdigest())
"""


def test_standalone_decryptor_unwraps_with_the_token(
    softhsm: str, make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    import hashlib
    import json

    import pyarrow.parquet as pq

    workspace = make_hsm_workspace(make_hsm_key())
    land_sample_lake(workspace.store, SAMPLE_DAY, 1, users=60, events=10)
    (rel,) = workspace.files("users", PARTITION)
    original = pq.read_table(workspace.store.full_path(rel)).column("email").to_pylist()
    _enable_and_protect(workspace)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _STANDALONE.format(pin_env=PIN_ENV),
            softhsm,
            TOKEN,
            workspace.store.full_path(rel),
            WORKSPACE,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    every = [(row, value) for row, value in enumerate(original) if value is not None]
    assert result.stdout.split() == [str(len(every)), hashlib.sha256(json.dumps(every).encode()).hexdigest()]


def test_pin_file_is_read_for_the_login(softhsm: str, make_hsm_key: Callable[[], str], tmp_path: Path) -> None:
    pin_file = tmp_path / "hsm-pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    token = Pkcs11Token(Pkcs11Settings(softhsm, TOKEN, pin_file=str(pin_file)))
    provider = Pkcs11Provider(token, make_hsm_key())
    dek, wrapped = provider.generate_data_key(CONTEXT)
    assert provider.unwrap(wrapped, CONTEXT) == dek


def test_rotation_to_pkcs11_needs_the_pkcs11_provider_configured(
    make_local_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    from fieldcrypt import PolicyError

    workspace = make_local_workspace()
    workspace.key_cache()
    with pytest.raises(PolicyError, match="needs the workspace configured with the pkcs11 provider"):
        workspace.start_rotation(f"pkcs11:{make_hsm_key()}")
    assert workspace.bindings.load().active_campaign is None


def test_hsm_workspace_with_an_unrelated_label_is_refused_naming_both(
    make_hsm_workspace: Callable[..., Workspace], make_hsm_key: Callable[[], str]
) -> None:
    bound, other = make_hsm_key(), make_hsm_key()
    make_hsm_workspace(bound).key_cache()
    with pytest.raises(KeyProviderError, match=f"bound to master key pkcs11:{bound}.*'{other}'"):
        make_hsm_workspace(other).key_cache()


# -- Dagster -----------------------------------------------------------------------------


def test_dagster_materializes_a_partition_under_an_hsm_key(
    tmp_path: Path, softhsm: str, make_hsm_key: Callable[[], str]
) -> None:
    from tests.dagster_support import asset_key, catalog_fieldcrypt, enable, land, materialize_partition, past_day

    label = make_hsm_key()
    key = {"provider": "pkcs11", "module": softhsm, "token": TOKEN, "key_label": label, "pin_env": PIN_ENV}
    fieldcrypt = catalog_fieldcrypt(tmp_path, str(tmp_path / "lake"), key)
    day = past_day(3)
    land(fieldcrypt, day, timedelta(days=10))  # every row ingested after the enablement below (now)
    enable(fieldcrypt, ("users.email", "email"))
    result = materialize_partition(fieldcrypt, day.isoformat(), selection=[asset_key("protected_users")])
    assert result.success
    workspace = fieldcrypt.workspace("test")
    (rel,) = workspace.files("users", day.isoformat())
    attributes = workspace.policy().for_dataset("users")
    assert set(wrapped_key_refs(workspace.store, rel, attributes).values()) == {label}


def test_wrong_pin_is_access_denied_without_the_pin_in_the_message(
    softhsm: str, make_hsm_key: Callable[[], str]
) -> None:
    # A fresh process: this one is already logged in to the token (PKCS#11 login is per process).
    code = f"""
import os, sys
from fieldcrypt.keys.providers.pkcs11 import Pkcs11Provider, Pkcs11Settings, Pkcs11Token
from fieldcrypt.errors import AccessDeniedError
os.environ["WRONG_PIN"] = "wrong-pin-7731"
try:
    Pkcs11Provider(Pkcs11Token(Pkcs11Settings({softhsm!r}, {TOKEN!r}, pin_env="WRONG_PIN")), {make_hsm_key()!r})
except AccessDeniedError as exc:
    print("refused", "leaked" if "wrong-pin-7731" in str(exc) else "clean", "PIN" in str(exc))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SCRIPT.parents[1]
    )
    assert result.stdout.split() == ["refused", "clean", "True"]


def test_second_configuration_with_a_wrong_pin_is_refused_although_the_process_is_logged_in(
    softhsm: str, make_hsm_key: Callable[[], str]
) -> None:
    """PKCS#11 login is per process: once logged in, the token checks no PIN again. A second
    configuration (another workspace, another PIN variable) with a wrong PIN is still refused."""
    code = f"""
import os
from fieldcrypt.keys.providers.pkcs11 import Pkcs11Provider, Pkcs11Settings, Pkcs11Token
from fieldcrypt.errors import AccessDeniedError
os.environ["GOOD_PIN"] = {PIN!r}
os.environ["WRONG_PIN"] = "wrong-pin-7731"
label = {make_hsm_key()!r}
Pkcs11Provider(Pkcs11Token(Pkcs11Settings({softhsm!r}, {TOKEN!r}, pin_env="GOOD_PIN")), label)
print("first", "ok")
try:
    Pkcs11Provider(Pkcs11Token(Pkcs11Settings({softhsm!r}, {TOKEN!r}, pin_env="WRONG_PIN")), label)
    print("second", "accepted")
except AccessDeniedError as exc:
    print("second", "refused", "leaked" if "wrong-pin-7731" in str(exc) else "clean", "another PIN" in str(exc))
Pkcs11Provider(Pkcs11Token(Pkcs11Settings({softhsm!r}, {TOKEN!r}, pin_env="GOOD_PIN")), label)
print("third", "ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SCRIPT.parents[1]
    )
    assert result.stdout.split() == ["first", "ok", "second", "refused", "clean", "True", "third", "ok"]
