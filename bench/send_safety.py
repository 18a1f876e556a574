"""Sends delivered once: a backend that retries, and a burst to one recipient (issue 16).

Starts ``gateway sim`` and the gateway (``config/examples/sim.yaml``, ports changed) and measures:

1. ``retries``: ``--sends`` WhatsApp sends (unique bodies, many recipients) at ``--rate`` a second,
   against a sim whose sends take 1 s at the median and 3 s at the 95th percentile, ``--lost`` of
   them losing their answer after Meta took the message. The backend behaves as a FastAPI backend
   with a 2 s client timeout: a send that takes longer, fails to connect or answers 5xx is sent
   again with the same body, up to 3 more times. Run twice: without ``Idempotency-Key``, and with
   one key per message generated where the message is made (a 409 is retried after Retry-After).
   Reported: messages the sim delivered, and delivered more than once.
2. ``burst``: 50 sends to one recipient at once, against a sim enforcing Meta's pair rate (10/m,
   burst ``--pair-burst``). Run twice: the gateway without pacing (sim.yaml with the per-recipient
   limit and the 131056 retry taken out) and as shipped. Reported: answers by kind, 131056 refusals
   the sim made, messages delivered.

    python bench/send_safety.py                    # both, ~2 min; report under bench/results/
    python bench/send_safety.py --only burst --pair-burst 5 --no-save
    python bench/send_safety.py --only burst --follow   # the backend retries each send until delivered (~5 min)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_replay import (
    GRAPH_TOKEN,
    HOST,
    PHONE_ID,
    REPO_DIR,
    RESULTS_DIR,
    SIM_CONFIG,
    machine,
    sim_get_stats,
    start_gateway,
    start_sim,
)
from overhead import Processes

CLIENT_TIMEOUT = 2.0  # the backend's own timeout: a send slower than this is sent again
RETRIES = 3

RETRY_SCENARIO = """
name: lost-answers
seed: 16
upstreams:
  graph:
    routes:
      send_message:
        latency: {{p50: 1s, p95: 3s, max: 6s}}
        resets: {{rate: {lost}, when: after_body}}   # Meta took it, the answer is lost
"""

BURST_SCENARIO = """
name: pair-rate
seed: 16
upstreams:
  graph:
    latency: {{p50: 80ms, p95: 200ms, max: 500ms}}
    limits:
      pair: {{rate: 10/m, burst: {burst}}}
      throughput: {{rate: 80/s, burst: 80}}
"""


def message(i: int, to: str, run: str) -> bytes:
    text = f"send-safety {run} {i} {uuid.uuid4()}"
    body = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}}
    return json.dumps(body).encode()


async def backend_send(session: aiohttp.ClientSession, url: str, body: bytes, key: str | None) -> str:
    """One message as the backend sends it: retried on a timeout, a connection error or a 5xx."""
    headers = {"Authorization": f"Bearer {GRAPH_TOKEN}", "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key  # made once per message, reused on every retry
    outcome = "failed"
    tries = 0
    deadline = time.monotonic() + 60
    while tries <= RETRIES and time.monotonic() < deadline:
        tries += 1
        try:
            async with session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(CLIENT_TIMEOUT)
            ) as r:
                await r.read()
                if r.status == 409:  # the first is still in flight: ask again, not counted as a retry
                    tries -= 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                if r.status < 500:
                    return "sent" if r.status < 300 else f"http {r.status}"
                outcome = f"http {r.status}" + (" (replayed)" if "x-gateway-idempotency" in r.headers else "")
        except (TimeoutError, aiohttp.ClientError):
            outcome = "client timeout / connection error"
    return outcome


async def retries_run(port: int, sim_ports: dict[str, int], sends: int, rate: float, keyed: bool) -> dict[str, Any]:
    run = "keyed" if keyed else "plain"
    url = f"http://{HOST}:{port}/graph/v20.0/{PHONE_ID}/messages"
    rng = random.Random(16)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        start = time.monotonic()
        for i in range(sends):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            body = message(i, f"3360{rng.randrange(10**6):06d}", run)
            key = str(uuid.uuid4()) if keyed else None
            tasks.append(asyncio.create_task(backend_send(session, url, body, key)))
        outcomes = Counter(await asyncio.gather(*tasks))
    await asyncio.sleep(1.0)
    stats = sim_get_stats(sim_ports)["messages"]
    return {"outcomes": dict(outcomes.most_common()), "sim": stats}


async def burst_run(port: int, sim_ports: dict[str, int], count: int, follow: bool) -> dict[str, Any]:
    """``count`` sends to one recipient at once. With ``follow``, the backend keeps each message until
    it is delivered: after a 429 it waits Retry-After, after a 131056 4^n seconds (Meta's advice)."""
    url = f"http://{HOST}:{port}/graph/v20.0/{PHONE_ID}/messages"
    began = time.monotonic()
    seen: Counter[str] = Counter()

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[str, float]:
        headers = {
            "Authorization": f"Bearer {GRAPH_TOKEN}",
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        body = message(i, "33612345678", "burst")
        backoff = 0
        while True:
            async with session.post(url, data=body, headers=headers) as r:
                data = await r.read()
                code = None
                if r.status >= 400:
                    try:
                        code = json.loads(data).get("error", {}).get("code")
                    except (ValueError, AttributeError):
                        code = None
                gateway = r.headers.get("x-gateway-error")
                kind = f"{r.status} {gateway}" if gateway else f"{r.status}" + (f" code {code}" if code else "")
                seen[kind] += 1
                if not follow or r.status == 200 or time.monotonic() - began > 900:
                    return kind, time.monotonic() - began
                if code == 131056:
                    await asyncio.sleep(4**backoff)
                    backoff = min(backoff + 1, 4)
                else:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(count)))
    kinds = Counter(kind for kind, _ in results)
    stats = sim_get_stats(sim_ports)
    return {
        "answers": dict(kinds.most_common()),
        "seen": dict(seen.most_common()),
        "slowest_s": round(max(t for _, t in results), 2),
        "sim_refused": stats["limits"]["refused"],
        "delivered": stats["messages"]["delivered"],
    }


def unpaced(text: str) -> str:
    """sim.yaml's send route as it was before issue 16: no per-recipient limit, no 131056 retry, no
    idempotency (a 131056 is then an answer the route does not retry, which a key would keep)."""
    dropped = ('"body:/to"', "waits:", "idempotency:")
    lines = [line for line in text.splitlines(keepends=True) if not any(d in line for d in dropped)]
    out = "".join(lines).replace(', "code:131000", "code:131056"]', ', "code:131000"]')
    if "131056" in out or "rate: 9/m" in out or "idempotency" in out:
        raise RuntimeError("could not take the issue 16 send policies out of sim.yaml")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"machine": machine(), "args": vars(args), "started": dt.datetime.now().isoformat()}
    with tempfile.TemporaryDirectory(prefix="send-safety-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "retries"):
            scenario = workdir / "lost.yaml"
            scenario.write_text(RETRY_SCENARIO.format(lost=args.lost))
            data["retries"] = {}
            for keyed in (False, True):
                with Processes(workdir) as procs:
                    sim_ports = start_sim(procs, scenario)
                    port = start_gateway(procs, sim_ports)
                    label = "with Idempotency-Key" if keyed else "without Idempotency-Key"
                    print(f"retries: {label} ...", flush=True)
                    data["retries"][label] = asyncio.run(retries_run(port, sim_ports, args.sends, args.rate, keyed))
        if args.only in (None, "burst"):
            scenario = workdir / "pair.yaml"
            scenario.write_text(BURST_SCENARIO.format(burst=args.pair_burst))
            unpaced_conf = workdir / "unpaced.yaml"
            unpaced_conf.write_text(unpaced(SIM_CONFIG.read_text()))
            data["burst"] = {}
            for label, source in (("without pacing", unpaced_conf), ("shipped (paced)", SIM_CONFIG)):
                with Processes(workdir) as procs:
                    sim_ports = start_sim(procs, scenario)
                    port = start_gateway(procs, sim_ports, source)
                    print(f"burst: {label} ...", flush=True)
                    data["burst"][label] = asyncio.run(burst_run(port, sim_ports, args.burst, args.follow))
    return data


def report(data: dict[str, Any]) -> str:
    a = data["args"]
    out = [
        "# Send safety: backend retries and bursts to one recipient",
        "",
        f"- started {data['started']}; machine: {data['machine']}",
        f"- `python bench/send_safety.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
    ]
    if "retries" in data:
        out += [
            f"## Backend retries (2 s client timeout, up to {RETRIES} retries), {a['sends']} sends, "
            f"{a['lost']} lost answers",
            "",
            "| run | messages | delivered at least once | delivered twice or more | extra deliveries "
            "| backend outcomes |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for label, r in data["retries"].items():
            sim = r["sim"]
            once = sim["delivered"] - sim["duplicates_delivered"]
            twice = sum(1 for x in sim["repeated"] if x["delivered"] > 1)
            shown = f"{twice}" if len(sim["repeated"]) < 50 else f"≥ {twice}"  # /_sim/stats lists 50 at most
            outcomes = ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items())
            out.append(f"| {label} | {sim['bodies']} | {once} | {shown} | {sim['duplicates_delivered']} | {outcomes} |")
        out.append("")
    if "burst" in data:
        how = "each retried until delivered" if a["follow"] else "one try each"
        out += [
            f"## {a['burst']} sends at once to one recipient, {how} (sim: pair rate 10/m, burst {a['pair_burst']})",
            "",
            "| gateway | final answers | all answers seen | 131056 refusals at the sim | delivered | last answer |",
            "|---|---|---|---:|---:|---:|",
        ]
        for label, r in data["burst"].items():
            answers = ", ".join(f"{k}: {v}" for k, v in r["answers"].items())
            seen = ", ".join(f"{k}: {v}" for k, v in r["seen"].items())
            refused = r["sim_refused"].get("131056", 0)
            out.append(f"| {label} | {answers} | {seen} | {refused} | {r['delivered']} | {r['slowest_s']} s |")
        out.append("")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", choices=("retries", "burst"), default=None)
    ap.add_argument("--sends", type=int, default=300, help="messages in the retries run")
    ap.add_argument("--rate", type=float, default=10.0, help="messages a second in the retries run")
    ap.add_argument("--lost", default="3%", help="sends whose answer the sim drops after taking the message")
    ap.add_argument("--burst", type=int, default=50, help="sends to one recipient at once")
    ap.add_argument("--pair-burst", type=int, default=45, help="the sim's pair-rate burst (Meta: up to 45, reported)")
    ap.add_argument("--follow", action="store_true", help="burst: the backend retries each send until delivered")
    ap.add_argument("--no-save", action="store_true", help="write nothing under bench/results/")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = run(args)
    text = report(data)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        day = dt.date.today().isoformat()
        for name in (f"send-safety-{day}.md", "send-safety-latest.md"):
            (RESULTS_DIR / name).write_text(text + "\n")
        print(f"wrote {RESULTS_DIR.relative_to(REPO_DIR)}/send-safety-latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
