"""Many calls at once: CPU, event-loop lag, our added latency, underruns; and leaks.

Three processes over loopback, as in production: the offline agent (a local OpenAI
Realtime server answering after a fixed delay, :data:`MODEL_DELAY_MS`), the server
under test, and this process playing every caller (``offline.caller``: real speech,
Twilio's exact Media Streams protocol, a 20 ms media clock).

Figures per level of concurrent calls:

- **CPU**: the server process's CPU time over the stretch when every call of the
  level was up (psutil), as a share of one core and per call.
- **Loop lag**: how late the server's event loop woke a 10 ms timer (p99, max).
- **Ingress / egress**: the latency our code adds (see :mod:`diagnostics`).
- **Underruns heard**: gaps over 40 ms inside agent speech at the callers, playing
  each reply on a 20 ms clock with a 20 ms jitter buffer
  (:func:`offline.caller.playout_gaps`).
- **RSS**: the server's peak resident memory.

The same levels run against a stock Pipecat Twilio bot (:mod:`bench.stock_server`)
with the same agent and callers. Then :func:`run_leaks`: many short calls in a
row, the server's memory, tasks and threads before and after, and teardown times.

The callers' own event loop is measured too: if it lags, arrival times (and so
underruns) are the callers' fault, not the server's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from contextlib import AsyncExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
import uvloop

from diagnostics import ProcessStats, percentile
from offline.caller import load_wav_8k, playout_gaps, run_call
from offline.proxy import workers_behind_nginx
from offline.server_process import ROOT, free_port, server_process, serving

AUDIO = ROOT.parent / "shared" / "audio"
#: The offline agent's fixed model delay before each reply's audio, in ms.
MODEL_DELAY_MS = 300
#: A gap inside agent speech longer than this is an underrun heard, in ms.
UNDERRUN_MS = 40.0
#: Seconds of jfk_8k.wav each density caller says (two utterances: a ~25 s call).
SPEECH_S = float(os.environ.get("BENCH_SPEECH_S", "5.5"))


@dataclass
class LevelResult:
    """The figures of one level of concurrent calls against one server.

    Parameters:
        server: ``ours`` or ``stock``.
        calls: Concurrent calls.
        processes: Server processes sharing the calls (behind one nginx port when > 1).
        cpu_core: Server CPU while all calls were up, in cores (1.0 = one core busy),
            summed over the processes.
        rss_mb: Server peak RSS, MB, summed over the processes.
        system_cpu: The whole machine's CPU use meanwhile, in cores (others included).
        lag_ms: Event-loop lag figures (``p50``, ``p99``, ``max``), ms; with several
            processes, the worst process's.
        ingress_ms, egress_ms: Added latency figures (``p50``, ``p95``, ``p99``), ms;
            with several processes, the worst process's.
        underruns: Gaps over :data:`UNDERRUN_MS` heard, over all calls.
        calls_with_underruns: Calls that heard at least one.
        worst_gap_ms: Longest gap heard.
        answered: Caller utterances that got a reply / all utterances.
        caller_lag_ms: The callers' own loop lag, p99, ms.
        gc_max_ms: The longest garbage collection in a server process, ms (it holds
            every call of that process).
        vad_batch: Silero windows per ONNX run, over the processes (None when the
            server does not batch: the stock bot).
        duration_s: Wall time of the level.
    """

    server: str
    calls: int
    processes: int = 1
    cpu_core: float = 0.0
    system_cpu: float = 0.0
    lag_ms: dict = field(default_factory=dict)
    ingress_ms: dict = field(default_factory=dict)
    egress_ms: dict = field(default_factory=dict)
    underruns: int = 0
    calls_with_underruns: int = 0
    worst_gap_ms: float = 0.0
    answered: tuple[int, int] = (0, 0)
    rss_mb: float = 0.0
    caller_lag_ms: float = 0.0
    gc_max_ms: float | None = None
    vad_batch: float | None = None
    duration_s: float = 0.0
    failed: int = 0


@dataclass
class LeakResult:
    """Memory, tasks and threads before and after many short calls, and teardown times."""

    calls: int
    lanes: int
    rss_before_mb: float
    rss_after_mb: float
    tasks_before: int
    tasks_after: int
    threads_before: int
    threads_after: int
    teardown_ms: dict
    failed: int
    duration_s: float


def _speech_wav(folder: Path, seconds: float) -> str:
    pcm = load_wav_8k(AUDIO / "jfk_8k.wav")[: int(seconds * 8000)]
    path = folder / "speech.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm.tobytes())
    return str(path)


@contextmanager
def offline_agent(delay_ms: int = MODEL_DELAY_MS):
    """The offline agent in its own process; yields its ws:// URL."""
    port = free_port()
    env = {**os.environ, "OFFLINE_AGENT_DELAY_MS": str(delay_ms)}
    process = subprocess.Popen(
        [sys.executable, "-m", "offline.realtime_server", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = process.stdout.readline()  # "Serving ws://... (Ctrl-C to stop)" once ready
        if "Serving" not in line:
            raise RuntimeError(f"offline agent did not start: {line!r}")
        yield f"ws://127.0.0.1:{port}/v1/realtime"
    finally:
        process.terminate()
        process.wait(timeout=10)


_OURS = dict(DIAGNOSTICS="true", MAX_CONCURRENT_CALLS="500", LOG_LEVEL="WARNING", API_KEY="",
             TWILIO_AUTH_TOKEN="", ALLOW_UNSIGNED_WEBHOOKS="")


@contextmanager
def our_server(agent_url: str, workdir: Path):
    """Our server (``server.py``), diagnostics on; yields its URL."""
    with server_process(workdir, LOCAL_AGENT_BASE_URL=agent_url, **_OURS) as (url, _):
        yield url


@contextmanager
def our_workers(agent_url: str, workdir: Path, processes: int):
    """Several of our server processes behind one nginx port (``docs/deployment.md``).

    Yields:
        ``(proxy URL, [each process's own URL])``: callers use the first, the figures
        are read from each process.
    """
    with workers_behind_nginx(workdir, processes, LOCAL_AGENT_BASE_URL=agent_url, **_OURS) as running:
        yield running


@contextmanager
def stock_server(agent_url: str, workdir: Path):
    """The stock Pipecat bot (:mod:`bench.stock_server`); yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "stock.log"
    with open(log, "w") as out, serving(
        [sys.executable, "-m", "bench.stock_server", "--port", str(port), "--agent", agent_url], url, log,
        name="stock server", cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
    ):
        yield url


async def _stats(client: httpx.AsyncClient, *, collect: bool = False) -> dict:
    return (await client.get("/debug/stats", params={"collect": str(collect).lower()})).json()


async def run_level(url: str, server: str, calls: int, wav: str,
                    process_urls: list[str] | None = None) -> LevelResult:
    """Run ``calls`` concurrent calls against one server and measure them.

    Calls start 100 ms apart (at most 5 s for all), so the level is reached in a
    few seconds, as a busy hour would, not in one burst.

    Args:
        url: Where the callers call: the server's base URL, or the proxy's.
        server: A label, ``ours`` or ``stock``.
        calls: Concurrent calls.
        wav: The callers' speech.
        process_urls: Each server process's own URL (diagnostics on), when several
            share ``url``; None: ``url`` is the one process.

    Returns:
        The level's figures.
    """
    process_urls = process_urls or [url]
    result = LevelResult(server, calls, processes=len(process_urls))
    caller_lag = ProcessStats()
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=u, timeout=10))
                   for u in process_urls]
        for client in clients:
            await client.post("/debug/stats/reset")
        processes = [psutil.Process((await _stats(client))["pid"]) for client in clients]
        caller_lag.start_lag_probe()
        started = time.monotonic()
        up = {"started": 0, "ended": 0}
        samples: list[tuple[float, float, float, int, int]] = []  # t, server cpu s, system busy s, up, ended

        async def one(i: int):
            await asyncio.sleep(min(0.1, 5.0 / calls) * i)
            up["started"] += 1
            try:
                return await run_call(url, wav, max_call_s=120, reply_timeout_s=15)
            finally:
                up["ended"] += 1

        async def sample():
            peak = 0
            while True:
                times = psutil.cpu_times()
                busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
                cpu = sum(t.user + t.system for t in (p.cpu_times() for p in processes))
                samples.append((time.monotonic(), cpu, busy, up["started"], up["ended"]))
                peak = max(peak, sum(p.memory_info().rss for p in processes))
                result.rss_mb = peak / 2**20
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        outcomes = await asyncio.gather(*(one(i) for i in range(calls)), return_exceptions=True)
        sampler.cancel()
        await caller_lag.stop_lag_probe()
        stats = [await _stats(client) for client in clients]
    result.duration_s = time.monotonic() - started
    full = [s for s in samples if s[3] == calls and s[4] == 0]  # every call up
    if len(full) < 2:
        full = samples
    span = full[-1][0] - full[0][0] or 1.0
    result.cpu_core = (full[-1][1] - full[0][1]) / span
    result.system_cpu = (full[-1][2] - full[0][2]) / span
    result.lag_ms = _worst([s["loop_lag_ms"] for s in stats])
    result.ingress_ms = _worst([s["ingress_ms"] for s in stats])
    result.egress_ms = _worst([s["egress_ms"] for s in stats])
    result.caller_lag_ms = percentile(list(caller_lag.loop_lag_ms), 99) or 0.0
    result.gc_max_ms = _worst([s["gc_pause_ms"] for s in stats]).get("max")
    vad_runs = sum(s.get("vad_runs", 0) for s in stats)
    result.vad_batch = sum(s.get("vad_windows", 0) for s in stats) / vad_runs if vad_runs else None
    answered = total = 0
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.failed += 1
            continue
        gaps = [g for g in playout_gaps(outcome.media_arrivals) if g > UNDERRUN_MS]
        result.underruns += len(gaps)
        result.calls_with_underruns += bool(gaps)
        result.worst_gap_ms = max([result.worst_gap_ms, *gaps])
        answered += sum(1 for u in outcome.utterances if u["replied"])
        total += len(outcome.utterances)
    result.answered = (answered, total)
    return result


def _worst(figures: list[dict]) -> dict:
    """Per figure (``p50``, ``p99``, ...), the highest over the processes; counts (``n``) summed."""
    worst = {}
    for k in {k for f in figures for k in f}:
        values = [f[k] for f in figures if f.get(k) is not None]
        worst[k] = (sum(values) if k == "n" else max(values)) if values else None
    return worst


def _split(calls: int, lanes: int) -> list[int]:
    """``calls`` shared out over ``lanes`` as evenly as possible (every call placed)."""
    return [calls // lanes + (i < calls % lanes) for i in range(lanes)]


async def run_leaks(url: str, wav: str, calls: int, lanes: int, warmup: int = 20) -> LeakResult:
    """Many short calls (1 s of speech, hang-up mid-greeting); the server before and after.

    Args:
        url: Our server's base URL (diagnostics on).
        wav: The callers' speech.
        calls: Calls after the warm-up.
        lanes: Calls in flight at once (each lane places its calls one after another).
        warmup: Calls placed before the baseline is taken.

    Returns:
        The figures.
    """
    failed = 0

    async def lane(count: int) -> None:
        nonlocal failed
        for _ in range(count):
            try:
                await run_call(url, wav, max_call_s=1.0)
            except Exception:
                failed += 1

    async def settled(client: httpx.AsyncClient) -> dict:
        for _ in range(50):  # until the last call's handler is done
            stats = await _stats(client, collect=True)
            if stats["calls_started"] == stats["calls_ended"]:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        return await _stats(client, collect=True)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(lane(n) for n in _split(warmup, lanes)))
        before = await settled(client)
        await client.post("/debug/stats/reset")
        started = time.monotonic()
        await asyncio.gather(*(lane(n) for n in _split(calls, lanes)))
        duration = time.monotonic() - started
        after = await settled(client)
    return LeakResult(
        calls=calls, lanes=lanes,
        rss_before_mb=before["rss_bytes"] / 2**20, rss_after_mb=after["rss_bytes"] / 2**20,
        tasks_before=before["tasks"], tasks_after=after["tasks"],
        threads_before=before["threads"], threads_after=after["threads"],
        teardown_ms=after["teardown_ms"], failed=failed, duration_s=duration,
    )


def _levels(name: str, default: str) -> list[int]:
    return [int(n) for n in os.environ.get(name, default).split(",") if n.strip()]


def run() -> tuple[list[LevelResult], LeakResult | None]:
    """Every level against both servers, then the leak run (env overrides below).

    ``BENCH_LEVELS`` (ours, one process, default ``1,10,25,50``), ``BENCH_WORKERS``
    (processes behind one nginx port for ``BENCH_WORKER_LEVELS``, default 2; 1 skips),
    ``BENCH_WORKER_LEVELS`` (default ``25,50``), ``BENCH_STOCK_LEVELS`` (default
    ``10,50``), ``BENCH_LEAK_CALLS`` (default 500; 0 skips), ``BENCH_LEAK_LANES``
    (default 8), ``BENCH_SPEECH_S`` (seconds of speech per density caller).
    """
    results: list[LevelResult] = []
    leaks = None
    with tempfile.TemporaryDirectory() as tmp, offline_agent() as agent:
        folder = Path(tmp)
        wav = _speech_wav(folder, SPEECH_S)
        short = folder / "short"
        short.mkdir()
        short_wav = _speech_wav(short, 1.0)
        with our_server(agent, folder) as url:
            for calls in _levels("BENCH_LEVELS", "1,10,25,50"):
                results.append(uvloop.run(run_level(url, "ours", calls, wav)))
                print(f"  ours, {calls} calls: done in {results[-1].duration_s:.0f} s", flush=True)
            leak_calls = int(os.environ.get("BENCH_LEAK_CALLS", "500"))
            if leak_calls:
                lanes = int(os.environ.get("BENCH_LEAK_LANES", "8"))
                leaks = uvloop.run(run_leaks(url, short_wav, leak_calls, lanes))
                print(f"  leaks, {leak_calls} calls: done in {leaks.duration_s:.0f} s", flush=True)
        processes = int(os.environ.get("BENCH_WORKERS", "2"))
        worker_levels = _levels("BENCH_WORKER_LEVELS", "25,50")
        if processes > 1 and worker_levels:
            workers = folder / "workers"
            workers.mkdir()
            with our_workers(agent, workers, processes) as (proxy, urls):
                for calls in worker_levels:
                    results.append(uvloop.run(run_level(proxy, "ours", calls, wav, urls)))
                    print(f"  ours x{processes}, {calls} calls: done in {results[-1].duration_s:.0f} s",
                          flush=True)
        stock_levels = _levels("BENCH_STOCK_LEVELS", "10,50")
        if stock_levels:
            with stock_server(agent, folder) as url:
                for calls in stock_levels:
                    results.append(uvloop.run(run_level(url, "stock", calls, wav)))
                    print(f"  stock, {calls} calls: done in {results[-1].duration_s:.0f} s", flush=True)
    return results, leaks


def _fmt(value: float | None, width: int = 6, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def report(results: list[LevelResult], leaks: LeakResult | None) -> str:
    """Text tables of the density levels and the leak run."""
    cores = psutil.cpu_count() or 0
    lines = [
        f"Density: concurrent calls on server processes ({cores} cores; offline agent "
        f"answers after {MODEL_DELAY_MS} ms; callers in another process)",
        f"{'server':6} {'procs':>5} {'calls':>5} {'CPU core':>8} {'/call':>6} {'machine':>7} {'lag p99':>7} "
        f"{'lag max':>7} {'in p50':>6} {'in p95':>6} {'out p50':>7} {'out p95':>7} "
        f"{'underruns':>9} {'worst':>6} {'answered':>9} {'RSS MB':>6} {'caller lag':>10} {'GC max':>6} {'VAD batch':>9}",
    ]
    for r in results:
        lines.append(
            f"{r.server:6} {r.processes:5d} {r.calls:5d} {r.cpu_core:8.2f} {r.cpu_core / r.calls:6.3f} "
            f"{r.system_cpu:7.2f} {_fmt(r.lag_ms.get('p99'), 7)} {_fmt(r.lag_ms.get('max'), 7)} "
            f"{_fmt(r.ingress_ms.get('p50'))} {_fmt(r.ingress_ms.get('p95'))} "
            f"{_fmt(r.egress_ms.get('p50'), 7)} {_fmt(r.egress_ms.get('p95'), 7)} "
            f"{r.underruns:4d} ({r.calls_with_underruns:2d}) {r.worst_gap_ms:6.0f} "
            f"{r.answered[0]:4d}/{r.answered[1]:<4d} {r.rss_mb:6.0f} {r.caller_lag_ms:10.1f} "
            f"{_fmt(r.gc_max_ms)} {_fmt(r.vad_batch, 9)}"
            + (f"  {r.failed} calls failed" if r.failed else "")
        )
    lines.append(
        "procs: server processes (more than one: behind one nginx port, docs/deployment.md). "
        "CPU core: server CPU while every call was up, all its processes (1.0 = one core); "
        "machine: all processes on the machine, callers, agent and nginx included. lag: server "
        "event loop, ms (the worst process's, as are in/out). in/out: ingress "
        "(caller audio in -> sent to the model) and egress (first model audio -> first Twilio "
        f"media), ms. underruns: gaps > {UNDERRUN_MS:.0f} ms inside agent speech at the callers "
        "(calls affected); worst gap, ms. caller lag: the callers' own loop, p99 ms. GC max: "
        "the server's longest garbage collection, ms. VAD batch: Silero windows scored per ONNX run "
        "(the calls of a process share runs)."
    )
    if leaks:
        lines += [
            "",
            f"Leaks: {leaks.calls} short calls ({leaks.lanes} at a time, each hung up 1 s in, "
            f"mid-greeting) after 20 warm-up calls, in {leaks.duration_s:.0f} s",
            f"  RSS {leaks.rss_before_mb:.0f} MB -> {leaks.rss_after_mb:.0f} MB "
            f"({leaks.rss_after_mb - leaks.rss_before_mb:+.1f} MB); asyncio tasks "
            f"{leaks.tasks_before} -> {leaks.tasks_after}; threads {leaks.threads_before} -> "
            f"{leaks.threads_after}; failed calls {leaks.failed}",
            f"  teardown after hang-up: p50 {_fmt(leaks.teardown_ms.get('p50'), 0)} ms, p95 "
            f"{_fmt(leaks.teardown_ms.get('p95'), 0)} ms, max {_fmt(leaks.teardown_ms.get('max'), 0)} ms "
            f"({leaks.teardown_ms.get('n')} calls)",
        ]
    return "\n".join(lines)


def plot(results: list[LevelResult], path: Path) -> None:
    """Server CPU, loop lag and added latency against concurrent calls, ours vs stock (PNG).

    One series per server and process count (``ours x2``: two processes behind nginx).
    CPU is the server's total (cores): one process's event loop tops out near one core,
    and once there, per-call figures mean nothing (every queue grows). Latency is on a
    log scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    series = sorted({(r.server, r.processes) for r in results})
    for server, processes in series:
        rows = sorted((r for r in results if (r.server, r.processes) == (server, processes)), key=lambda r: r.calls)
        style = "D-." if processes > 1 else {"ours": "o-", "stock": "s--"}.get(server, "^-")
        server = f"{server} x{processes}" if processes > 1 else server
        calls = [r.calls for r in rows]
        axes[0].plot(calls, [r.cpu_core for r in rows], style, label=server)
        axes[1].plot(calls, [r.lag_ms.get("p99") or 0 for r in rows], style, label=f"{server} p99")
        axes[2].plot(calls, [r.ingress_ms.get("p95") or 0 for r in rows], style, label=f"{server} ingress p95")
        axes[2].plot(calls, [r.egress_ms.get("p95") or 0 for r in rows], style[0] + ":",
                     label=f"{server} egress p95")
    axes[0].set(title="server CPU (all its processes)", xlabel="concurrent calls", ylabel="cores")
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")  # one event loop's ceiling
    axes[0].axhline(1.6, color="grey", lw=0.8)  # the goal: 80% of 2 cores
    axes[1].set(title="event-loop lag (goal < 20 ms)", xlabel="concurrent calls", ylabel="ms")
    axes[2].set(title="added latency (goal < 10 ms)", xlabel="concurrent calls", ylabel="ms",
                yscale="log")
    axes[1].axhline(20, color="grey", lw=0.8)
    axes[2].axhline(10, color="grey", lw=0.8)
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(results: list[LevelResult], leaks: LeakResult | None, sections: list[str],
               folder: Path = ROOT / "docs") -> Path:
    """Write ``docs/benchmarks.md`` (every table printed, the conditions) and its plot.

    Args:
        results: The density levels.
        leaks: The leak run, if any.
        sections: The other benchmarks' printed tables, in order.
        folder: Where to write.

    Returns:
        The Markdown file's path.
    """
    folder.mkdir(exist_ok=True)
    plot(results, folder / "benchmarks.png")
    raw = {"levels": [asdict(r) for r in results], "leaks": asdict(leaks) if leaks else None}
    (folder / "benchmarks.json").write_text(json.dumps(raw, indent=1) + "\n")
    load = os.getloadavg()
    text = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); rerun it to refresh. Conditions of this run: "
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; the offline agent, the callers and "
        "the server each in their own process on this one machine, over loopback. The machine may "
        "have been shared with other work: see the `machine` column (all CPU in use, in cores) "
        "against the server's own.",
        "",
        "![Server CPU, loop lag and added latency against concurrent calls](benchmarks.png)",
        "",
        "The figures behind the plot: `benchmarks.json`.",
        "",
        "## Density, latency, underruns, memory",
        "",
        "```",
        report(results, leaks),
        "```",
        "",
        "How each figure is measured: `bench/density.py` and `diagnostics.py` (docstrings). "
        "Goals (issue 8): 50 calls on 2 cores under 80% CPU, loop lag p99 under 20 ms, no "
        "underrun heard, ingress and egress under 10 ms p95, RSS within 20 MB of the warmed-up "
        "baseline after 500 calls, teardown within 1 s of hang-up.",
    ]
    for section in sections:
        text += ["", "```", section, "```"]
    path = folder / "benchmarks.md"
    path.write_text("\n".join(text) + "\n")
    return path
