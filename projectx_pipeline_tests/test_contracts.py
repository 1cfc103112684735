"""ContractId: a contract id parsed once at the edge, then trusted (and still a str)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectx_pipeline.domain.contracts import CONTRACT_ID_RE, ContractId
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.settings import load_settings

from .support.market import MES


def test_a_contract_id_is_a_str_that_parses_once():
    cid = ContractId(MES)
    assert isinstance(cid, str) and cid == MES and hash(cid) == hash(MES)
    assert ContractId(cid) is cid  # already parsed: passed through, not checked again
    assert json.dumps({cid: cid}) == json.dumps({MES: MES})


@pytest.mark.parametrize("bad", ["MES", "CON.F.US.MES.M25\n", "con.f.us.mes.m25", "CON.F.US.MES.M2", "", None, 25, b"CON.F.US.MES.M25"])
def test_a_bad_contract_id_names_the_value_and_the_expected_form(bad):
    with pytest.raises(DomainError, match=r"invalid contract id .*expected the gateway's form"):
        ContractId(bad)


@given(st.text(max_size=30))
def test_contract_id_accepts_exactly_the_gateway_pattern(text):
    if CONTRACT_ID_RE.fullmatch(text):
        assert ContractId(text) == text
    else:
        with pytest.raises(DomainError):
            ContractId(text)


def test_settings_hand_contract_ids_inward(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("contracts: [{id: CON.F.US.MES.M25}, {id: CON.F.US.MNQ.Z26}]\ntimeframes: [1m]\n")
    settings = load_settings({"PROJECTX_SETTINGS": str(path)})
    assert settings.contract_ids == ["CON.F.US.MES.M25", "CON.F.US.MNQ.Z26"]
    assert all(type(cid) is ContractId for cid in settings.contract_ids)
