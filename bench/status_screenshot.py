"""The README's picture of the status page, taken during a fault replay (issue 18).

Starts ``gateway sim`` on ``config/scenarios/seeds.yaml`` and a gateway on ``config/examples/sim.yaml``
(ports changed only, an admin token set so the page shows its login), replays the inbox backend's
mix through it (``fault_replay.build_schedule``: the same calls as the fault-replay benchmark), and
photographs the admin port's ``GET /`` with Debian's Chromium driven by Playwright (the system
browser: nothing is downloaded). The picture is taken at the first moment after ``--after`` seconds
when the page shows an open breaker, or at ``--latest`` seconds whatever it shows; the seeds'
windows repeat every 60 s (Supabase 8-13 s, Graph 20-24 s, Gemini's overload burst 30-40 s). With
``config/examples/sim.yaml``'s rate-mode breakers (half of the last 30 s failing), the first Supabase
outage opens Supabase's breaker for a few seconds; later windows, diluted by 30 s of good answers,
are ridden out by retries and STALE answers without opening it.

    python bench/status_screenshot.py                       # writes docs/status-page.png
    python bench/status_screenshot.py --out /tmp/page.png --width 390 --height 844   # a phone

Needs ``pip install playwright`` and ``apt-get install chromium`` (``.ci/run`` installs both).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_replay import (
    REPO_DIR,
    ROUTES,
    SCENARIOS_DIR,
    Progress,
    build_schedule,
    gateway_config,
    gateway_env,
    http_request,
    replay,
    start_sim,
)
from overhead import Processes, free_ports, wait_until

CHROMIUM = "/usr/bin/chromium"
TOKEN = "screenshot-admin-token"  # a throwaway token: the page only shows its login field


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_DIR / "docs" / "status-page.png")
    p.add_argument("--rate", type=float, default=30.0, help="requests per second (default 30)")
    p.add_argument("--after", type=float, default=8.0, help="earliest second of the picture (default 8)")
    p.add_argument("--latest", type=float, default=50.0, help="latest second of the picture (default 50)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--scenario", type=Path, default=SCENARIOS_DIR / "seeds.yaml")
    return p.parse_args(argv)


async def shoot(args: argparse.Namespace, admin_port: int, t0: float) -> str:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": args.width, "height": args.height})
        await page.goto(f"http://127.0.0.1:{admin_port}/")
        await page.wait_for_selector("[data-upstream]")
        why = f"at {args.latest:.0f} s"
        while time.monotonic() - t0 < args.latest:
            # what the page itself shows, polled as a person would see it
            if time.monotonic() - t0 >= args.after and await page.locator(".breaker[data-state='open']").count():
                why = f"at {time.monotonic() - t0:.0f} s, the page showing an open breaker"
                break
            await asyncio.sleep(0.25)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(args.out), full_page=True)
        await browser.close()
        return why


def shrink(path: Path) -> None:
    """Re-save the PNG with a palette of 128 colours when Pillow is there (matplotlib, the bench
    extra, brings it): a flat page loses nothing visible and its file gets 3 to 4 times smaller."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


async def run(args: argparse.Namespace) -> None:
    weights = {r.name: r.weight for r in ROUTES}
    calls = build_schedule(args.rate, args.latest + 5, weights, seed=7)
    with tempfile.TemporaryDirectory(prefix="status-shot-") as tmp, Processes(Path(tmp)) as procs:
        sim_ports = start_sim(procs, args.scenario)
        port, admin_port = free_ports(2)
        conf = Path(tmp) / "gateway.yaml"
        conf.write_text(gateway_config(sim_ports, port, admin_port))
        env = {**gateway_env(), "GATEWAY_ADMIN_TOKEN": TOKEN}
        gw = procs.start("gateway", [sys.executable, "-m", "gateway", "run", "--config", str(conf)], env=env)
        wait_until(gw, lambda: http_request(admin_port, "GET", "/readyz")[0] == 200, "GET /readyz 200")
        for p in sim_ports.values():
            http_request(p, "POST", "/_sim/reset?restart=1")
        base = {name: f"http://127.0.0.1:{port}/{name}" for name in sim_ports}
        t0 = time.monotonic()
        traffic = asyncio.create_task(replay(base, calls, "replay", Progress(True)))
        why = await shoot(args, admin_port, t0)
        traffic.cancel()
        shrink(args.out)
        size = args.out.stat().st_size
        print(f"{args.out}: {size // 1024} KiB, {why} into the seeds replay at {args.rate:g} req/s")


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
