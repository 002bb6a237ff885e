"""The exact bytes the policy MAC covers (docs/FORMAT.md section 6a): the canonical JSON of the stored
document without `authentication`; policies authenticated before (v1) stay verifiable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import date
from pathlib import Path

import pytest

from demo.sample_data import land_sample_lake
from fieldcrypt.cli import ACK_FLAG, main, run
from fieldcrypt.keys.keystore import Keystore
from fieldcrypt.keys.policy_auth import AUTH_FORMAT_V1, MAC_LABEL_V1
from fieldcrypt.lake.store import LakeStore
from fieldcrypt.policy.policy import POLICY_PATH, Policy
from tests.catalogs import write_catalog
from tests.test_format_doc import standalone_decryptor


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lake with users.email enabled; returns its policy.json."""
    catalog = write_catalog(tmp_path / "fieldcrypt.yaml", "acme", "lake", {"provider": "local", "keystore": "ks.json"})
    monkeypatch.setenv("FIELDCRYPT_CATALOG", str(catalog))
    assert run(["key", "init"]) == 0
    land_sample_lake(LakeStore.from_uri(str(tmp_path / "lake")), date(2030, 1, 1), 1, 20, 20)
    assert run(["enable", "users.email", "--mask", "email", ACK_FLAG]) == 0
    return tmp_path / "lake" / POLICY_PATH


def mac_key(policy_path: Path, keystore: Path) -> bytes:
    """The policy MAC key, unwrapped as docs/FORMAT.md says (its standalone `unwrap`, local master key)."""
    auth = json.loads(policy_path.read_text())["authentication"]
    keys = Keystore.load(keystore)
    wrapped = base64.b64decode(auth["mac_key"])
    return bytes(
        standalone_decryptor()["unwrap"](
            wrapped, "acme", "#policy", "#mac", {v: keys.key_for(v) for v in keys.versions}
        )
    )


def test_policy_mac_is_over_the_canonical_json_of_the_document_without_authentication(cli: Path) -> None:
    stored = json.loads(cli.read_text())
    auth = stored.pop("authentication")
    canonical = json.dumps(stored, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    key = mac_key(cli, cli.parents[2] / "ks.json")
    expected = hmac.digest(key, b"fieldcrypt-policy-mac-v2\n" + canonical, hashlib.sha256)
    assert auth["format"] == "fieldcrypt-policy-mac-v2"
    assert base64.b64decode(auth["mac"]) == expected


def test_member_added_to_the_stored_policy_fails_authentication(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = json.loads(cli.read_text())
    stored["attributes"]["users.email"]["note"] = "added by hand"  # ignored by the reader, covered by the MAC
    cli.write_text(json.dumps(stored, indent=2))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["status", "users"])
    assert exited.value.code == 2
    assert "policy.json failed authentication" in capsys.readouterr().err


def test_policy_authenticated_before_the_canonical_form_is_verified_and_resealed_on_its_next_change(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As a lake written before canonical MACs and policy versions: a v1 MAC, no version, none recorded as seen.
    stored = json.loads(cli.read_text())
    auth = stored.pop("authentication")
    stored.pop("version", None)
    binding = cli.with_name("master_key.json")
    binding.write_text(json.dumps({k: v for k, v in json.loads(binding.read_text()).items() if k != "seen"}))
    key = mac_key(cli, cli.parents[2] / "ks.json")
    v1_text = Policy.from_json(json.dumps(stored), "policy").to_json()  # what v1 MAC'd: the Policy.to_json text
    stored["authentication"] = {
        "format": AUTH_FORMAT_V1,
        "mac_key": auth["mac_key"],
        "mac": base64.b64encode(hmac.digest(key, MAC_LABEL_V1 + v1_text.encode(), hashlib.sha256)).decode(),
    }
    cli.write_text(json.dumps(stored, indent=2) + "\n")
    assert run(["status", "users"]) == 0
    assert run(["enable", "users.phone", "--mask", "last4", ACK_FLAG]) == 0
    assert json.loads(cli.read_text())["authentication"]["format"] == "fieldcrypt-policy-mac-v2"
