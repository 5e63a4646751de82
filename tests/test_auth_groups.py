"""casa_auth.groups: claim paths, spellings and decisions, as tables."""

import pytest

from casa_auth.groups import MalformedClaims, claim_value, has_claim, decide, extract_groups, normalise_group, string_claim


@pytest.mark.parametrize(
    "claims, path, value",
    [
        ({"wlcg.groups": ["/cms"]}, "wlcg.groups", ["/cms"]),
        ({"wlcg": {"groups": ["/cms"]}}, "wlcg.groups", ["/cms"]),
        ({"realm_access": {"roles": ["a"]}}, "realm_access.roles", ["a"]),
        ({"a": {"b.c": {"d": 1}}}, "a.b.c.d", 1),
        ({"groups": "cms"}, "groups", "cms"),
        ({"wlcg": "x"}, "wlcg.groups", None),
        ({}, "groups", None),
    ],
)
def test_claim_paths(claims, path, value):
    if value is None:
        assert not has_claim(claims, path)
    else:
        assert claim_value(claims, path) == value


@pytest.mark.parametrize(
    "raw, normal",
    [("/cms", "cms"), ("/cms/uscms", "cms/uscms"), (" cms ", "cms"), ("CO:COU:OpenData Facility:members:active",) * 2, ("//x", "x")],
)
def test_normalise_group(raw, normal):
    assert normalise_group(raw) == normal


def test_groups_from_several_sources_and_paths_are_merged_sorted_and_unique():
    groups = extract_groups(
        {"userinfo": {"wlcg.groups": ["/cms", "/cms/uscms"], "groups": "/cms"}, "id_token": {"groups": ["/atlas", ""]}, "none": None},
        ["wlcg.groups", "groups"],
    )
    assert groups == ("atlas", "cms", "cms/uscms")


@pytest.mark.parametrize("bad", [42, {"cms": 1}, ["cms", None], [["cms"]], True])
def test_mistyped_group_claims_are_malformed(bad):
    with pytest.raises(MalformedClaims, match="'groups'"):
        extract_groups({"userinfo": {"groups": bad}}, ["groups"])


@pytest.mark.parametrize(
    "claims, says",
    [({}, "no 'email' claim"), ({"email": None}, "no 'email' claim"), ({"email": 3}, "a int"), ({"email": ""}, "an empty string"), ([], "JSON object")],
)
def test_string_claim_errors_say_what_is_wrong(claims, says):
    with pytest.raises(MalformedClaims, match=says):
        string_claim(claims, "email")


@pytest.mark.parametrize(
    "groups, allowed, admin, expected",
    [
        (["cms"], {"cms"}, set(), (True, False)),
        (["/cms"], {"cms"}, set(), (True, False)),
        (["cms"], {"/cms"}, set(), (True, False)),
        (["cms/admins"], {"cms"}, {"/cms/admins"}, (True, True)),
        (["atlas"], {"cms"}, {"cms/admins"}, (False, False)),
        ([], {"cms"}, set(), (False, False)),
        (["cms"], set(), set(), (False, False)),
    ],
)
def test_decide(groups, allowed, admin, expected):
    decision = decide(groups, allowed, admin)
    assert (decision.allowed, decision.admin) == expected
    assert decision.required == tuple(sorted(g.lstrip("/") for g in (allowed or admin)))
