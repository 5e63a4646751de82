"""casa_spawner.kube.chart: values merged as Helm merges them, and what the z2jh chart's hub makes of them."""

import pytest

from casa_hub.errors import ConfigurationError
from casa_spawner.kube.chart import chart_hub_config, chart_values, get_config_of, hub_environment, read_values, resource_name

DEFAULTS = {
    "hub": {"image": {"name": "hub", "tag": "1"}, "extraEnv": {}},
    "singleuser": {"image": {"name": "quay.io/x", "tag": "1"}, "extraLabels": {"a": "1"}, "extraTolerations": [{"key": "d"}],
                   "uid": 1000, "cmd": "jupyterhub-singleuser"},
}


def test_maps_merge_lists_and_scalars_replace_null_deletes():
    values = chart_values(
        DEFAULTS,
        {"singleuser": {"image": {"tag": "2"}, "extraTolerations": [{"key": "u"}], "uid": None}},
        {"singleuser": {"image": {"name": "site/nb"}, "extraLabels": None}, "new": {"k": [1]}},
    )
    assert values["singleuser"]["image"] == {"name": "site/nb", "tag": "2"}
    assert values["singleuser"]["extraTolerations"] == [{"key": "u"}]
    assert "uid" not in values["singleuser"] and "extraLabels" not in values["singleuser"]
    assert values["new"] == {"k": [1]} and values["hub"] == DEFAULTS["hub"]
    assert DEFAULTS["singleuser"]["uid"] == 1000  # the defaults are not modified


def test_a_later_file_restores_what_an_earlier_null_deleted():
    values = chart_values(DEFAULTS, {"singleuser": {"uid": None}}, {"singleuser": {"uid": 1001}})
    assert values["singleuser"]["uid"] == 1001


def test_set_file_goes_in_after_the_files():
    values = chart_values(DEFAULTS, {"hub": {"extraFiles": {"x": {"mountPath": "/m"}}}},
                          set_values={"hub.extraFiles.x.stringData": "text"})
    assert values["hub"]["extraFiles"]["x"] == {"mountPath": "/m", "stringData": "text"}


def test_get_config_is_the_chart_s():
    get = get_config_of({"a": {"b": {"c": 1}, "n": None}, "s": "x"})
    assert get("a.b.c") == 1 and get("a.missing", 7) == 7 and get("s.deeper", 8) == 8 and get("a.n", 9) is None


def test_resource_names_follow_the_chart_s_overrides():
    assert resource_name({"fullnameOverride": ""}, "user-scheduler", "casa") == "user-scheduler"
    assert resource_name({"fullnameOverride": "af"}, "singleuser", "casa") == "af-singleuser"
    assert resource_name({}, "priority", "casa") == "casa-jupyterhub-priority"
    assert resource_name({}, "priority", "my-jupyterhub") == "my-jupyterhub-priority"


def test_hub_config_takes_singleuser_settings_and_keeps_chart_secrets_out():
    values = chart_values(DEFAULTS, {"hub": {"config": {"JupyterHub": {"cookie_secret": "s", "admin_access": True},
                                                        "CryptKeeper": {"keys": ["k"]}}},
                                     "singleuser": {"cmd": None, "extraEnv": {"A": "1"}}})
    c = chart_hub_config(values, namespace="ns")
    assert c.KubeSpawner.image == "quay.io/x:1" and c.KubeSpawner.uid == 1000 and c.KubeSpawner.namespace == "ns"
    assert c.KubeSpawner.environment == {"A": "1"}
    assert "cmd" not in c.Spawner  # an explicit null removed the chart's command: the image's own runs
    assert c.JupyterHub.admin_access is True and "cookie_secret" not in c.JupyterHub and "keys" not in c.CryptKeeper


def test_a_lowercase_hub_config_section_is_refused():
    with pytest.raises(ConfigurationError, match="hub.config.loadRoles"):
        chart_hub_config(chart_values(DEFAULTS, {"hub": {"config": {"loadRoles": {}}}}))


def test_hub_environment_has_literal_values_only():
    env = hub_environment({"hub": {"extraEnv": {"A": "1", "B": {"valueFrom": {"secretKeyRef": {}}}, "C": {"value": 2}}}})
    assert env == {"A": "1", "C": "2"}
    assert hub_environment({"hub": {"extraEnv": [{"name": "D", "value": "4"}]}}) == {"D": "4"}


@pytest.mark.parametrize("text, says", [("a: [", "not valid YAML"), ("- 1\n", "not a list"), ("", None)])
def test_values_files_are_checked(tmp_path, text, says):
    path = tmp_path / "v.yaml"
    path.write_text(text)
    if says is None:
        assert read_values(path) == {}
    else:
        with pytest.raises(ConfigurationError, match=says):
            read_values(path)
