from pathlib import Path

import pytest
from pydantic import ValidationError

from tviz.config import CommonSettings, ServerSettings, hash_api_key


def test_nested_sections_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TVIZ_MODEL__PATH", str(tmp_path))
    monkeypatch.setenv("TVIZ_LOG__LEVEL", "DEBUG")
    settings = CommonSettings()
    assert settings.model.directory == tmp_path
    assert settings.model.display_name == tmp_path.name
    assert settings.log.level == "DEBUG"


def test_default_model_directory_is_under_the_cache() -> None:
    settings = CommonSettings()
    assert settings.model.directory.name == "SmolLM2-135M-Instruct"


def test_api_keys_are_configured_as_hashes() -> None:
    digest = hash_api_key("secret")
    assert ServerSettings(api_key_hashes=[digest.upper()]).api_key_hashes == [digest]
    with pytest.raises(ValidationError, match="sha256"):
        ServerSettings(api_key_hashes=["secret"])


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="together"):
        ServerSettings(tls_cert=tmp_path / "cert.pem")


def test_inspector_dumps_are_not_open_to_everyone_by_default() -> None:
    from inspector.settings import InspectorSection, WebSettings

    assert InspectorSection().server.host == "127.0.0.1"
    with pytest.raises(ValidationError, match="reachable from other machines"):
        InspectorSection(server=ServerSettings(host="0.0.0.0"))
    with pytest.raises(ValidationError, match=r"web\.host"):
        InspectorSection(web=WebSettings(host="0.0.0.0", port=8080))
    keyed = ServerSettings(host="0.0.0.0", api_key_hashes=[hash_api_key("k")])
    assert InspectorSection(server=keyed).server.host == "0.0.0.0"
    assert InspectorSection(server=ServerSettings(host="0.0.0.0"), allow_anonymous_remote=True)
