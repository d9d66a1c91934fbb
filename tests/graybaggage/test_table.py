"""The lane table: parsing, validation (agreeing with the shipped JSON Schema), Kubernetes name forms."""
from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest

from graybaggage.table import TableError, load_table_text, parse_table

SCHEMA = json.loads(resources.files("graybaggage").joinpath("schema/lane-table.schema.json").read_text())


def table(routes: dict, **lane) -> dict:
    return {"version": 1, "namespace": "default", "lanes": {"gray": {"routes": routes, **lane}}}


GOOD = [
    table({"a": "a-gray"}),
    table({"a.default:80": "a-gray.default:80"}, fallback="strict"),
    table({"127.0.0.1:8003": "127.0.0.1:8013", "[::1]:80": "[::1]:81"}),
    {"version": 1, "lanes": {}},
    table({}, entry={"rules": []}),
    table({}, queues={"version": 1, "celery": ["celery", "emails"]}),
    table({}, queues={"version": 2, "celery": {"some": "future shape"}}),  # another version: ignored
    table({}, queues={"version": 1, "rq": ["default"]}),  # a kind this reader does not know: ignored
    table({}, mirror={"percent": 5}),  # an optional lane field added later: ignored
]
BAD = [
    ({"version": 2, "lanes": {}}, "version"),
    ({"lanes": {}}, "version"),
    ({"version": 1}, "lanes"),
    ({"version": 1, "lanes": {"Gray": {"routes": {}}}}, "lanes.Gray"),
    (table({"a": "a-gray"}, fallback="maybe"), "lanes.gray.fallback"),
    (table({"a/b": "x"}), "lanes.gray.routes"),
    (table({"a:99999": "x"}), "port"),
    (table({"a": "x y"}), "target"),
    ({"version": 1, "lanes": {"gray": {}}}, "lanes.gray.routes"),
    ({"version": 1, "lanes": {}, "surprise": True}, "unknown field"),
    (table({}, queues=["celery"]), "lanes.gray.queues"),
    (table({}, queues={"version": 1, "celery": "celery"}), "lanes.gray.queues.celery"),
    (table({}, queues={"version": 1, "celery": [""]}), "lanes.gray.queues.celery"),
]


QUEUES = [
    # (lanes.gray.queues, lane, queue, lane_has_queue, ignored)
    (None, "gray", "celery", False, ()),
    ({"version": 1, "celery": ["celery"]}, "gray", "celery", True, ()),
    ({"version": 1, "celery": ["celery"]}, "gray", "emails", False, ()),
    ({"version": 1, "celery": ["celery"]}, "blue", "celery", False, ()),
    ({"version": 1, "celery": []}, "gray", "celery", False, ()),
    ({"version": 2, "celery": ["celery"]}, "gray", "celery", False,
     ("lanes.gray.queues (version 2; this reader knows 1)",)),
    ({"version": 1, "rq": ["celery"]}, "gray", "celery", False, ("lanes.gray.queues.rq",)),
]


@pytest.mark.parametrize("queues,lane,queue,expected,ignored", QUEUES)
def test_lane_queues(queues, lane, queue, expected, ignored):
    t = parse_table(table({"a": "a-gray"}, **({"queues": queues} if queues is not None else {})))
    assert t.lane_has_queue(lane, queue) is expected
    assert t.ignored == ignored


def test_unknown_lane_fields_are_ignored_and_named():
    t = parse_table(table({"a": "a-gray"}, zeta=1, alpha={"x": 1}))
    assert t.ignored == ("lanes.gray.alpha", "lanes.gray.zeta")
    assert t.decide("gray", "a", 80) is not None  # the rest of the table is in force


@pytest.mark.parametrize("data", GOOD)
def test_good_tables_pass_parser_and_schema(data):
    parse_table(data)
    jsonschema.validate(data, SCHEMA)


@pytest.mark.parametrize("data,field", BAD)
def test_bad_tables_name_the_field_and_fail_schema(data, field):
    with pytest.raises(TableError) as err:
        parse_table(data)
    assert field in str(err.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA)


@pytest.mark.parametrize("caller,expected", [
    ("spring-cloud-c", "spring-cloud-c-gray"),
    ("spring-cloud-c.default", "spring-cloud-c-gray.default"),
    ("spring-cloud-c.default.svc", "spring-cloud-c-gray.default.svc"),
    ("spring-cloud-c.default.svc.cluster.local", "spring-cloud-c-gray.default.svc.cluster.local"),
    ("SPRING-CLOUD-C.Default", "spring-cloud-c-gray.default"),
])
def test_kubernetes_forms_match_and_target_keeps_callers_form(caller, expected):
    t = parse_table(table({"spring-cloud-c": "spring-cloud-c-gray"}))
    route = t.decide("gray", caller, 20001, "default")
    assert route is not None and route.host == expected and route.port == 20001


def test_other_namespace_and_ports():
    t = parse_table(table({"c:20001": "c-gray:20002", "d.other": "d-gray.other"}))
    assert t.decide("gray", "c", 20001, "default").authority == "c-gray:20002"
    assert t.decide("gray", "c", 20003, "default") is None  # host:port matches only that port
    assert t.decide("gray", "c", 20001, "other") is None  # a one-label name means the caller's namespace
    assert t.decide("gray", "d", 80, "default") is None
    assert t.decide("gray", "d", 80, "other").host == "d-gray"
    assert t.decide("gray", "d.other", 80, "default").host == "d-gray.other"


def test_port_specific_beats_host():
    t = parse_table(table({"c": "c-gray", "c:9090": "c-admin-gray"}))
    assert t.decide("gray", "c", 9090, "default").host == "c-admin-gray"
    assert t.decide("gray", "c", 80, "default").host == "c-gray"


def test_unknown_lane_and_host_stay_base():
    t = parse_table(table({"c": "c-gray"}))
    assert t.decide("blue", "c", 80) is None
    assert t.decide(None, "c", 80) is None
    assert t.decide("gray", "x", 80) is None
    assert t.decide("gray", "c.example.com", 80) is None


def test_target_in_another_namespace_is_qualified_for_short_callers():
    t = parse_table(table({"c": "c-gray.canary"}))
    assert t.decide("gray", "c", 80, "default").host == "c-gray.canary"


def test_yaml_and_json_text():
    assert load_table_text("version: 1\nlanes:\n  gray:\n    routes: {c: c-gray}\n").decide("gray", "c", 1)
    with pytest.raises(TableError, match="cannot parse"):
        load_table_text("{ nope")


@pytest.mark.parametrize("host,is_ip", [
    ("10.0.0.1", True), ("127.0.0.1", True), ("::1", True), ("fe80::1", True),  # addresses
    ("svc", False), ("svc-1", False), ("svc.ns", False), ("c-gray.demo.svc.cluster.local", False),  # names
    ("1.2.3", False), ("10.0.0.256", False), ("123", False),  # digits and dots, but not an address
    ("\u0661.\u0662.\u0663.\u0664", False),  # non-ASCII digits pass the pre-check; ipaddress rejects them
])
def test_is_ip_pre_check_agrees_with_ipaddress(host, is_ip):
    import ipaddress

    from graybaggage.table import _is_ip

    try:
        ipaddress.ip_address(host)
        expected = True
    except ValueError:
        expected = False
    assert _is_ip(host) is is_ip is expected


def test_memo_evicts_its_oldest_entry_so_a_late_value_is_remembered():
    from graybaggage import _memo
    from graybaggage.lane import CarrierReader

    memo: dict = {}
    for i in range(5):
        _memo.put(memo, i, i, 3)
    assert list(memo) == [2, 3, 4]  # bounded, newest kept
    reader = CarrierReader("x-mse-tag", None, 8192, size=256)
    for i in range(300):  # junk fills the memo first
        reader.read([f"junk{i}"], None)
    assert reader.read(["gray"], None)[0] == "gray"
    assert (True, "gray") in reader._verdicts and len(reader._verdicts) == 256  # the late lane is memoised
