"""A real CrowdSec bouncer client (pycrowdsec) against `gatewatch serve`'s decisions API.

Run by engine/cli/tests/serve.rs with the service's URL and a bouncer key. It starts
pycrowdsec's StreamClient (startup poll, then a poll a second), makes the rules decide by
posting a credential-stuffing burst to /v1/events, waits for the bouncer to see the ban,
moves event time past the decision's end, waits for the bouncer to drop it, and checks that
requests without the key, or with another, are refused.
"""

import json
import sys
import time

import requests
from pycrowdsec.client import QueryClient, StreamClient

URL, KEY = sys.argv[1], sys.argv[2]
ATTACKER, USER = "198.51.100.1", "198.51.100.2"
T0 = 1_767_603_600_000


def event(ms: int, ip: str, status: int, n: int) -> str:
    return json.dumps(
        {
            "id": n,
            "ts": T0 + ms,
            "client_ip": ip,
            "method": "POST",
            "path": "/v1/login",
            "status": status,
        }
    )


def post(lines: list[str]) -> list[dict]:
    r = requests.post(f"{URL}/v1/events", data="\n".join(lines) + "\n", timeout=10)
    r.raise_for_status()
    return [json.loads(x) for x in r.text.splitlines() if x]


def wait_for(what, want, seconds=15.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = what()
        if got == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"waited {seconds} s for {want!r}, still {what()!r}")


# Refused without the key, or with another.
assert requests.get(f"{URL}/v1/decisions", timeout=5).status_code == 403
assert (
    requests.get(f"{URL}/v1/decisions", headers={"X-Api-Key": "nope"}, timeout=5).status_code == 403
)
# Nothing decided yet: CrowdSec answers null, not [].
r = requests.get(f"{URL}/v1/decisions", headers={"X-Api-Key": KEY}, timeout=5)
assert r.status_code == 200 and r.json() is None, r.text

bouncer = StreamClient(api_key=KEY, lapi_url=f"{URL}/", interval=1)
bouncer.run()
assert bouncer.get_action_for(ATTACKER) is None

# Twelve failed logins in twelve seconds from one address, a normal user beside it.
burst = [(i * 1000, ATTACKER, 401) for i in range(12)]
burst += [(i * 1000 + 500, USER, 200) for i in range(12)]
records = post([event(ms, ip, st, n) for n, (ms, ip, st) in enumerate(sorted(burst))])
assert not any("rejected" in r for r in records), records
# Records carry the decision covering them; the shadow range rule's are never enforced.
decided = [r for r in records if r.get("decision", {}).get("mode") == "enforce"]
assert decided and all(r["client"] == f"ip:{ATTACKER}" for r in decided), records
until = decided[0]["decision"]["until"]

wait_for(lambda: bouncer.get_action_for(ATTACKER), "ban")
assert bouncer.get_action_for(USER) is None
query = QueryClient(api_key=KEY, lapi_url=f"{URL}/")
[d] = query.get_decisions_for(ATTACKER)
assert (d["type"], d["scope"], d["value"], d["scenario"], d["origin"]) == (
    "ban",
    "Ip",
    ATTACKER,
    "stuffing",
    "gatewatch",
), d
assert d["until"] == until and d["duration"].endswith("s") and not d["simulated"], d

# Event time moves past the decision's end (60 s): it expires, the bouncer drops it.
post([event(80_000, USER, 200, 100)])
wait_for(lambda: bouncer.get_action_for(ATTACKER), None)
r = requests.get(f"{URL}/v1/decisions", headers={"X-Api-Key": KEY}, timeout=5)
assert r.json() is None, r.text
print("bouncer ok")
