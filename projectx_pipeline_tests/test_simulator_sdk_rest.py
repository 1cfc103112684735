"""The REST calls public ProjectX SDKs make around login, served by the simulator with the
gateway's shapes: Account/search, Contract/available, Status/ping and Auth/logout."""

from __future__ import annotations

import pytest
import requests

from projectx_pipeline.gateway.simulator.accounts import SIMULATED_ACCOUNTS
from projectx_pipeline.gateway.simulator.server import SimulatorServer

from .support.market import MES
from .support.simulator import api, finished_simulator, login

pytestmark = pytest.mark.timeout(60)

ENVELOPE_OK = {"success": True, "errorCode": 0, "errorMessage": None}


@pytest.fixture(scope="module")
def sim():
    sim = finished_simulator(rate_limits=False)
    yield sim
    sim.stop()


def test_account_search_lists_the_accounts_with_the_gateway_fields(sim):
    token = login(sim)
    active = api(sim, "Account/search", {"onlyActiveAccounts": True}, token).json()
    assert {k: active[k] for k in ENVELOPE_OK} == ENVELOPE_OK
    assert active["accounts"], "an SDK refuses to go on without an account"
    for account in active["accounts"]:
        assert set(account) == {"id", "name", "balance", "canTrade", "isVisible", "simulated"}
        assert isinstance(account["id"], int) and isinstance(account["balance"], float) and account["canTrade"] is True
    every = api(sim, "Account/search", {"onlyActiveAccounts": False}, token).json()["accounts"]
    assert [a["id"] for a in every] == [a.id for a in SIMULATED_ACCOUNTS]
    assert len(every) > len(active["accounts"]), "onlyActiveAccounts filters the accounts that cannot trade"


def test_account_search_needs_a_token_and_its_field(sim):
    token = login(sim)
    assert api(sim, "Account/search", {"onlyActiveAccounts": True}, None).status_code == 401
    missing = api(sim, "Account/search", {}, token)
    assert missing.status_code == 400 and "onlyActiveAccounts" in missing.json()["errors"]
    wrong_type = api(sim, "Account/search", {"onlyActiveAccounts": "yes"}, token)
    assert wrong_type.status_code == 400 and "onlyActiveAccounts" in wrong_type.json()["errors"]


def test_contract_available_lists_every_contract_as_search_does(sim):
    token = login(sim)
    available = api(sim, "Contract/available", {"live": False}, token).json()
    assert {k: available[k] for k in ENVELOPE_OK} == ENVELOPE_OK
    searched = api(sim, "Contract/search", {"searchText": "MES", "live": False}, token).json()["contracts"]
    assert available["contracts"] == searched and [c["id"] for c in available["contracts"]] == [MES]
    assert api(sim, "Contract/available", {}, token).status_code == 400
    assert api(sim, "Contract/available", {"live": False}, None).status_code == 401


def test_synthetic_contract_available_lists_all_of_them():
    contracts = [MES, "CON.F.US.MNQ.M25", "CON.F.US.MGC.Q25"]
    with SimulatorServer(synthetic=contracts, rate_limits=False) as sim:
        listed = api(sim, "Contract/available", {"live": True}, login(sim)).json()["contracts"]
        assert sorted(c["id"] for c in listed) == sorted(contracts)


def test_status_ping_answers_pong_without_a_token(sim):
    response = requests.get(f"{sim.api_url}/api/Status/ping", timeout=5)
    assert response.status_code == 200 and response.json() == "pong"
    assert response.headers["Content-Type"].startswith("application/json")


def test_logout_ends_that_session_only(sim):
    leaving, staying = login(sim), login(sim)
    answer = api(sim, "Auth/logout", "", leaving)
    assert answer.status_code == 200 and answer.json() == ENVELOPE_OK
    assert api(sim, "Contract/available", {"live": False}, leaving).status_code == 401
    assert api(sim, "Auth/validate", "", leaving).status_code == 401, "a logged-out token cannot be renewed"
    hub_upgrade = requests.get(f"{sim.rtc_url}/hubs/market", params={"access_token": leaving}, timeout=5)
    assert hub_upgrade.status_code == 401
    assert api(sim, "Contract/available", {"live": False}, staying).status_code == 200
    assert api(sim, "Auth/logout", "", leaving).status_code == 401, "a second logout with the same token"
