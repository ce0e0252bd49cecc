"""federation.yaml: defaults, the documented example, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryodiscovery.core.errors import InputError
from cryodiscovery.federation.config import (
    FACILITY_CONFIG_EXAMPLE,
    load_facility_config,
)


def _write(tmp_path: Path, data: object, name: str = "federation.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def site(tmp_path: Path) -> dict[str, object]:
    """A valid enabled configuration with relative paths that exist."""
    for folder in ("relion", "cs", "gen"):
        (tmp_path / folder).mkdir()
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "node_key").write_text("x")
    return {
        "enabled": True,
        "superlink": "fed.example.org:9092",
        "ca_certificate": "ca.crt",
        "node_private_key": "node_key",
        "data": {
            "relion_projects": ["relion"],
            "cryosparc_folders": ["cs"],
            "generated_folders": ["gen"],
        },
    }


def test_empty_file_is_disabled_with_defaults(tmp_path: Path) -> None:
    cfg = load_facility_config(_write(tmp_path, ""))
    assert not cfg.enabled
    assert cfg.caps.local_epochs == 1 and cfg.caps.max_classes == 20000
    assert cfg.privacy.dp is None and not cfg.privacy.secagg
    assert cfg.data.all() == ()
    assert cfg.acceptance.metric == "auc"
    assert cfg.caps.threads == 0  # torch's own default


def test_documented_example_parses(tmp_path: Path) -> None:
    text = FACILITY_CONFIG_EXAMPLE.replace("/data/relion/projectA", str(tmp_path))
    text = text.replace("/data/cryosparc/P3", str(tmp_path))
    cfg = load_facility_config(_write(tmp_path, text))
    assert not cfg.enabled
    assert cfg.privacy.dp is not None and cfg.privacy.dp.noise_multiplier == 0.5
    assert cfg.model_path == Path("/facility/cryodiscovery/model.pt")
    assert cfg.validation_fraction == 0.2
    assert cfg.caps.threads == 0


def test_enabled_site_resolves_paths_relative_to_file(
    tmp_path: Path, site: dict[str, object]
) -> None:
    cfg = load_facility_config(_write(tmp_path, site))
    assert cfg.enabled and cfg.superlink == "fed.example.org:9092"
    assert cfg.ca_certificate == tmp_path / "ca.crt"
    assert cfg.data.all() == (
        ("relion", tmp_path / "relion"),
        ("cryosparc", tmp_path / "cs"),
        ("generated", tmp_path / "gen"),
    )
    assert cfg.source == tmp_path / "federation.yaml"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"enabeld": True}, "unknown key 'enabeld'"),
        ({"privacy": {"dpp": {}}}, "unknown key 'privacy.dpp' (known: dp, secagg)"),
        ({"caps": {"local_epochs": 0}}, "'caps.local_epochs' must be between 1"),
        ({"caps": {"batch_size": 2.5}}, "'caps.batch_size' must be a whole number"),
        ({"caps": {"threads": -1}}, "'caps.threads' must be between 0"),
        ({"cache_dir": 3}, "'cache_dir' must be a path"),
        ({"enabled": "yes please"}, "'enabled' must be true or false"),
        ({"superlink": "fed.example.org"}, "'superlink' must be host:port"),
        ({"superlink": "host:70000"}, "'superlink' must be host:port"),
        ({"validation": {"fraction": 0.9}}, "'validation.fraction' must be between"),
        ({"acceptance": {"metric": "f1"}}, "'acceptance.metric' must be one of"),
        ({"acceptance": {"tolerance": -1}}, "'acceptance.tolerance' must be between"),
        (
            {"privacy": {"dp": {"clipping_norm": 1.0}}},
            "'privacy.dp.noise_multiplier' is required",
        ),
        (
            {"privacy": {"dp": {"clipping_norm": 0, "noise_multiplier": 1}}},
            "'privacy.dp.clipping_norm'",
        ),
        ({"privacy": {"secagg": "on"}}, "'privacy.secagg' must be true or false"),
        ({"personalise": {"epochs": -1}}, "'personalise.epochs' must be between"),
        ({"personalise": {"rounds": 1}}, "unknown key 'personalise.rounds'"),
        (
            {"data": {"relion_projects": ["missing"]}},
            "'data.relion_projects' is not a folder",
        ),
        ({"data": ["relion"]}, "'data' must be a mapping"),
        ({"node_private_key": None}, "'node_private_key' is required when enabled"),
        ({"ca_certificate": "nope.crt"}, "'ca_certificate' does not exist"),
    ],
)
def test_bad_values_name_file_and_key(
    tmp_path: Path, site: dict[str, object], patch: dict[str, object], message: str
) -> None:
    data = {**site, **patch}
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as err:
        load_facility_config(path)
    text = str(err.value)
    assert text.startswith(str(path) + ": ")
    assert message in text
    assert "\n" not in text


def test_disabled_site_does_not_need_credentials(tmp_path: Path) -> None:
    cfg = load_facility_config(
        _write(tmp_path, {"enabled": False, "superlink": "[::1]:9092"})
    )
    assert cfg.superlink == "[::1]:9092" and cfg.node_private_key is None


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not valid YAML \(line 2\)"):
        load_facility_config(_write(tmp_path, "enabled: true\n  bad: [\n"))
    with pytest.raises(InputError, match="not found"):
        load_facility_config(tmp_path / "absent.yaml")
    with pytest.raises(InputError, match="the file must be a mapping"):
        load_facility_config(_write(tmp_path, "- a\n- b\n"))


def test_deeply_nested_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(InputError, match="nested too deeply") as info:
        load_facility_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
