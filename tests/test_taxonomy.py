from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from hazardlens.errors import Invalid
from hazardlens.settings import Settings
from hazardlens.taxonomy import (
    SEVERITIES,
    Taxonomy,
    default_taxonomy,
    load_taxonomy,
    validate_addition,
)
from tests.fixtures.taxonomy import SHIPPED_TAXONOMY

DATA_CLASSES = {"person", "helmet", "head", "safety_clothes", "self_clothes", "fire", "smoke"}

# The visible classes that domain.md ('What a photo can show') asks for, by sector.
SECTOR_VISIBLE = {
    "dust": {
        "accumulated_dust",
        "explosion_vent",
        "non_ex_electrical_box",
        "non_ex_socket",
        "non_ex_lamp",
        "rotary_airlock",
    },
    "steel": {"ladle", "hook", "person_under_ladle", "standing_water_molten_metal", "co_alarm"},
    "aluminium": {"molten_metal_spill", "standing_water_molten_metal"},
    "confined_space": {
        "confined_space_entry_no_sign",
        "confined_space_entry_signed",
        "ventilation_fan",
        "ventilation_duct",
        "gas_detector",
        "rescue_tripod",
        "harness",
        "respirator",
    },
}

LEGAL = "某省安全生产条例（强制性条款）"


def _find(entries: list[dict[str, Any]], field: str, value: str) -> dict[str, Any]:
    return next(e for e in entries if e[field] == value)


# ---- the shipped file ------------------------------------------------------------------------


def test_shipped_has_the_25_key_items(taxonomy: Taxonomy) -> None:
    assert len(taxonomy.items) == 25
    by_sector = Counter(item.sector for item in taxonomy.items.values())
    assert by_sector == {"steel": 8, "aluminium": 7, "dust": 6, "confined_space": 4}
    prefixes = {"steel": "GT-", "aluminium": "LJ-", "dust": "FC-", "confined_space": "YX-"}
    for item in taxonomy.items.values():
        assert item.code.startswith(prefixes[item.sector])
        assert item.legal_basis and all(b.strip() for b in item.legal_basis)
        assert item.title_zh and item.title_en and item.active and item.org_code is None


def test_shipped_sectors(taxonomy: Taxonomy) -> None:
    assert set(taxonomy.sectors) == {"dust", "steel", "aluminium", "confined_space", "general"}
    assert taxonomy.sectors["aluminium"].name_zh == "铝加工（深井铸造）"
    assert taxonomy.sectors["confined_space"].name_zh == "有限空间作业"


def test_shipped_covers_the_data_classes(taxonomy: Taxonomy) -> None:
    assert set(taxonomy.class_keys()) >= DATA_CLASSES
    for key in ("person", "helmet", "safety_clothes"):
        assert taxonomy.get_class(key).is_hazard is False
    for key in ("head", "self_clothes", "fire", "smoke"):
        assert taxonomy.get_class(key).is_hazard is True
    for key in ("person", "helmet", "head", "safety_clothes", "self_clothes"):
        assert taxonomy.get_class(key).sector == "general"
    assert taxonomy.get_class("head").finding_zh == "作业人员未佩戴安全帽"


@pytest.mark.parametrize("sector", sorted(SECTOR_VISIBLE))
def test_shipped_covers_each_sectors_visible_classes(taxonomy: Taxonomy, sector: str) -> None:
    relevant = {c.key for c in taxonomy.active_classes(sector)}
    assert SECTOR_VISIBLE[sector] <= relevant


def test_every_hazard_class_is_citable(taxonomy: Taxonomy) -> None:
    """A confirmed suggestion becomes a finding, which needs text, an item or a basis, and a severity."""
    for cls in taxonomy.classes.values():
        assert cls.severity in SEVERITIES
        assert cls.name_zh and cls.name_en
        assert set(cls.inspection_items) <= set(taxonomy.items)
        if cls.is_hazard:
            assert cls.finding_zh and cls.legal_basis, cls.key


def test_class_inherits_legal_basis_from_its_items(taxonomy: Taxonomy) -> None:
    dust = taxonomy.get_class("accumulated_dust")
    assert dust.inspection_items == ("FC-06",)
    assert dust.legal_basis == taxonomy.items["FC-06"].legal_basis
    # an explicit basis wins over the items'
    head = taxonomy.get_class("head")
    assert head.legal_basis != taxonomy.items["YX-04"].legal_basis


def test_active_classes_by_sector_follows_items(taxonomy: Taxonomy) -> None:
    confined = {c.key for c in taxonomy.active_classes("confined_space")}
    assert "helmet" in confined  # a general class supporting YX-04
    assert "person" not in confined and "accumulated_dust" not in confined
    assert len(taxonomy.active_classes()) == len(taxonomy.class_keys()) == len(taxonomy.classes)
    with pytest.raises(Invalid, match="unknown sector"):
        taxonomy.active_classes("mining")


def test_get_class_unknown_suggests_close_matches(taxonomy: Taxonomy) -> None:
    with pytest.raises(Invalid, match=r"did you mean: helmet") as exc:
        taxonomy.get_class("helmt")
    assert exc.value.code == "unknown_class" and exc.value.status == 422


def test_to_dict_is_json_ready(taxonomy: Taxonomy) -> None:
    body = json.loads(json.dumps(taxonomy.to_dict(), ensure_ascii=False))
    assert body["version"] == taxonomy.version
    assert len(body["items"]) == 25 and len(body["classes"]) == len(taxonomy.classes)
    assert _find(body["classes"], "key", "head")["legal_basis"]
    assert body["severities"] == list(SEVERITIES)


def test_taxonomy_is_read_only(taxonomy: Taxonomy) -> None:
    with pytest.raises(TypeError):
        taxonomy.classes["x"] = taxonomy.classes["head"]  # type: ignore[index]


def test_default_taxonomy_follows_settings(tmp_path, write_taxonomy) -> None:
    assert default_taxonomy(Settings(home=tmp_path)).version == load_taxonomy(SHIPPED_TAXONOMY).version
    path = write_taxonomy(lambda raw: raw.update(version="test"))
    assert default_taxonomy(Settings(home=tmp_path, taxonomy_path=path)).release == "test"


# ---- version ----------------------------------------------------------------------------------


def test_version_is_stable_across_runs(taxonomy: Taxonomy) -> None:
    assert load_taxonomy(SHIPPED_TAXONOMY).version == taxonomy.version
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from hazardlens.taxonomy import load_taxonomy; import sys; print(load_taxonomy(sys.argv[1]).version)",
            str(SHIPPED_TAXONOMY),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == taxonomy.version


def test_version_changes_with_content_not_order(taxonomy: Taxonomy, write_taxonomy) -> None:
    def severity(raw: dict[str, Any]) -> None:
        _find(raw["classes"], "key", "smoke")["severity"] = "critical"

    def reorder(raw: dict[str, Any]) -> None:
        raw["classes"].reverse()
        raw["items"].reverse()

    assert load_taxonomy(write_taxonomy(severity)).version != taxonomy.version
    assert load_taxonomy(write_taxonomy(reorder)).version == taxonomy.version


# ---- validation of broken copies ---------------------------------------------------------------


def _broken(write_taxonomy, edit) -> Invalid:
    with pytest.raises(Invalid) as exc:
        load_taxonomy(write_taxonomy(edit))
    return exc.value


def test_duplicate_class_key_refused(write_taxonomy) -> None:
    err = _broken(write_taxonomy, lambda raw: raw["classes"].append(dict(_find(raw["classes"], "key", "head"))))
    assert "duplicate class key 'head'" in err.message


def test_duplicate_item_code_refused(write_taxonomy) -> None:
    err = _broken(write_taxonomy, lambda raw: raw["items"].append(dict(raw["items"][0])))
    assert "duplicate item code 'GT-01'" in err.message


def test_unknown_sector_refused(write_taxonomy) -> None:
    err = _broken(write_taxonomy, lambda raw: _find(raw["classes"], "key", "fire").update(sector="mining"))
    assert "class fire: unknown sector 'mining'" in err.message


def test_unknown_item_refused(write_taxonomy) -> None:
    err = _broken(
        write_taxonomy, lambda raw: _find(raw["classes"], "key", "accumulated_dust").update(inspection_items=["FC-99"])
    )
    assert "class accumulated_dust: unknown inspection item(s) FC-99" in err.message


def test_item_without_legal_basis_refused(write_taxonomy) -> None:
    err = _broken(write_taxonomy, lambda raw: _find(raw["items"], "code", "YX-02").pop("legal_basis"))
    assert "(YX-02): 'legal_basis' is missing" in err.message
    err = _broken(write_taxonomy, lambda raw: _find(raw["items"], "code", "YX-02").update(legal_basis=[" "]))
    assert "YX-02" in err.message


def test_bad_severity_and_empty_name_refused_together(write_taxonomy) -> None:
    def edit(raw: dict[str, Any]) -> None:
        _find(raw["classes"], "key", "smoke")["severity"] = "severe"
        _find(raw["classes"], "key", "ladle")["name_zh"] = ""

    err = _broken(write_taxonomy, edit)
    assert "(smoke): severity 'severe'" in err.message
    assert "(ladle): 'name_zh' must be a non-empty string" in err.message
    assert len(err.details) == 2


def test_misspelt_field_refused(write_taxonomy) -> None:
    def edit(raw: dict[str, Any]) -> None:
        _find(raw["items"], "code", "GT-01")["legal_bases"] = _find(raw["items"], "code", "GT-01").pop("legal_basis")

    err = _broken(write_taxonomy, edit)
    assert "(GT-01): unknown field(s) legal_bases" in err.message


def test_hazard_class_without_any_basis_refused(write_taxonomy) -> None:
    err = _broken(write_taxonomy, lambda raw: _find(raw["classes"], "key", "fire").pop("legal_basis"))
    assert "class fire: a hazard class needs a legal basis" in err.message


def test_unreadable_file_refused(tmp_path) -> None:
    with pytest.raises(Invalid, match="cannot read"):
        load_taxonomy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [unclosed", encoding="utf-8")
    with pytest.raises(Invalid, match="not valid YAML"):
        load_taxonomy(bad)


# ---- provincial additions ----------------------------------------------------------------------


def _class_addition(status: str, key: str = "zj_forklift_in_dust_zone", **payload: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": key,
        "name_zh": "粉尘区域内燃叉车",
        "name_en": "Combustion forklift in a dust zone",
        "sector": "dust",
        "inspection_items": [],
        "severity": "high",
        "is_hazard": True,
        "finding_zh": "粉尘爆炸危险场所使用非防爆内燃叉车",
        "legal_basis": [LEGAL],
    }
    body.update(payload)
    return {"kind": "class", "org_code": "330000", "status": status, "payload": body}


def _item_addition(status: str, code: str = "ZJ-FC-07") -> dict[str, Any]:
    return {
        "kind": "item",
        "org_code": "330000",
        "status": status,
        "payload": {
            "code": code,
            "sector": "dust",
            "title_zh": "粉尘区域车辆未防爆",
            "title_en": "Vehicles in dust zones not explosion-proof",
            "legal_basis": LEGAL,
        },
    }


def test_pending_class_is_included_but_inactive(taxonomy: Taxonomy) -> None:
    extended = taxonomy.with_additions([_class_addition("pending")])
    cls = extended.classes["zj_forklift_in_dust_zone"]
    assert cls.active is False and cls.org_code == "330000" and cls.status == "pending"
    assert "zj_forklift_in_dust_zone" not in extended.class_keys()
    assert cls not in extended.active_classes("dust")
    with pytest.raises(Invalid, match="not active") as exc:
        extended.get_class("zj_forklift_in_dust_zone")
    assert exc.value.code == "inactive_class"
    assert _find(extended.to_dict()["classes"], "key", "zj_forklift_in_dust_zone")["active"] is False
    # the original is untouched
    assert "zj_forklift_in_dust_zone" not in taxonomy.classes


def test_approved_class_becomes_active(taxonomy: Taxonomy) -> None:
    pending = taxonomy.with_additions([_class_addition("pending")])
    approved = taxonomy.with_additions([_class_addition("approved")])
    cls = approved.get_class("zj_forklift_in_dust_zone")
    assert cls.active and cls.legal_basis == (LEGAL,)
    assert cls in approved.active_classes("dust")
    assert len({taxonomy.version, pending.version, approved.version}) == 3


def test_rejected_class_stays_inactive(taxonomy: Taxonomy) -> None:
    extended = taxonomy.with_additions([_class_addition("rejected")])
    with pytest.raises(Invalid):
        extended.get_class("zj_forklift_in_dust_zone")


@pytest.mark.parametrize(
    "addition",
    [
        _class_addition("approved", legal_basis=[]),
        _class_addition("approved", legal_basis=None),
        {**_item_addition("approved"), "payload": {**_item_addition("approved")["payload"], "legal_basis": ""}},
    ],
)
def test_addition_without_legal_basis_refused(taxonomy: Taxonomy, addition: dict[str, Any]) -> None:
    with pytest.raises(Invalid, match="legal_basis"):
        taxonomy.with_additions([addition])
    with pytest.raises(Invalid, match="legal_basis"):
        validate_addition(taxonomy, addition)


def test_class_citing_national_items_still_needs_its_own_basis(taxonomy: Taxonomy) -> None:
    with pytest.raises(Invalid, match="legal_basis"):
        taxonomy.with_additions([_class_addition("approved", legal_basis=None, inspection_items=["FC-06"])])


def test_approved_class_on_pending_item_stays_inactive(taxonomy: Taxonomy) -> None:
    cls = _class_addition("approved", inspection_items=["ZJ-FC-07"])
    waiting = taxonomy.with_additions([_item_addition("pending"), cls])
    assert waiting.items["ZJ-FC-07"].active is False
    assert waiting.classes["zj_forklift_in_dust_zone"].active is False
    ready = taxonomy.with_additions([_item_addition("approved"), cls])
    assert ready.get_class("zj_forklift_in_dust_zone").inspection_items == ("ZJ-FC-07",)
    assert ready.get_item("ZJ-FC-07").org_code == "330000"


@pytest.mark.parametrize(
    ("addition", "message"),
    [
        (_class_addition("approved", key="head"), "duplicate class key 'head'"),
        (_item_addition("approved", code="GT-01"), "duplicate item code 'GT-01'"),
        (_class_addition("approved", sector="mining"), "unknown sector 'mining'"),
        (_class_addition("approved", inspection_items=["XX-01"]), "unknown inspection item"),
        (_class_addition("approved", active=True), "'active' cannot be set"),
        ({**_class_addition("approved"), "status": "maybe"}, "status 'maybe'"),
        ({**_class_addition("approved"), "org_code": ""}, "org_code"),
        ({**_class_addition("approved"), "kind": "sector"}, "kind 'sector'"),
    ],
)
def test_bad_additions_refused(taxonomy: Taxonomy, addition: dict[str, Any], message: str) -> None:
    with pytest.raises(Invalid) as exc:
        validate_addition(taxonomy, addition)
    assert message in exc.value.message


def test_valid_addition_passes_validation(taxonomy: Taxonomy) -> None:
    validate_addition(taxonomy, _class_addition("pending"))
    validate_addition(taxonomy, _item_addition("pending"))
