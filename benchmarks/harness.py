"""Pieces the side-by-side benchmarks share: running one trainer per process, step clocks, peak memory.

Each trainer runs in a child process (``run_child``) that prints one ``RESULT {json}`` line, so its peak
memory is its own. Inside the child:

    clock = StepClock(device)          # a timestamp after every optimizer step, whatever the trainer
    memory = MemoryMeter(device)       # GPU: max allocated; CPU: peak RSS, sampled in a thread
    ...train...
    print(result_line({"step_s": clock.median_step(warmup), **memory.report(clock)}))
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time

RESULT_PREFIX = "RESULT "


def sync(device: str) -> None:
    """Wait for queued GPU work, so host timestamps mean finished work."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def step_times(stamps: list[float], warmup: int) -> list[float]:
    """Seconds between consecutive timestamps, without the first ``warmup`` intervals."""
    return [b - a for a, b in zip(stamps, stamps[1:])][warmup:]


def result_line(result: dict) -> str:
    return RESULT_PREFIX + json.dumps(result)


def run_child(cmd: list[str], name: str, env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run one benchmark child and return the dict of its last ``RESULT`` line; exit with its stderr if it failed."""
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if out.returncode or not lines:
        sys.exit(f"{name} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-6000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


class StepClock:
    """Timestamps after every ``optimizer.step()`` of any torch optimizer in this process.

    It is a global optimizer post-hook, so it times a trainer without touching its code; accelerate's
    wrapped optimizer only calls the inner ``step`` on real updates, so accumulation micro-steps do not count.
    ``stamps`` are wall-clock times; ``cpu_stamps`` the CPU time of the whole process (all threads), which on a
    CPU shared with other jobs varies far less than wall time as long as the process has the threads it asks for.
    """

    def __init__(self, device: str):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.device = device
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []
        self._handle = register_optimizer_step_post_hook(self._hook)

    def _hook(self, *_) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())

    def median_step(self, warmup: int, cpu: bool = False) -> float:
        times = step_times(self.cpu_stamps if cpu else self.stamps, warmup)
        if not times:
            raise RuntimeError(f"{len(self.stamps)} optimizer steps leave none to time after {warmup} warm-up steps.")
        return statistics.median(times)

    def close(self) -> None:
        self._handle.remove()


def current_rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryMeter:
    """Peak memory of this process.

    GPU: ``torch.cuda.max_memory_allocated`` (the whole run, loading included), plus what was allocated at
    the first call of ``mark_start`` (static memory: weights, optimizer state). CPU: peak RSS of the whole
    run (``getrusage``), the RSS at ``mark_start`` and the highest RSS sampled every few milliseconds after it.
    """

    def __init__(self, device: str, interval: float = 0.005):
        self.device = device
        self.start: int | None = None
        self.sampled_peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def mark_start(self) -> None:
        """Call once training begins (models loaded, before the first forward); later calls do nothing."""
        if self.start is not None:
            return
        if self.device == "cuda":
            import torch

            self.start = torch.cuda.memory_allocated()
            return
        self.start = self.sampled_peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled_peak = max(self.sampled_peak, current_rss())
            time.sleep(self._interval)

    def report(self) -> dict[str, float]:
        """``peak_gib`` (whole process), ``start_gib`` (at ``mark_start``) and ``train_peak_gib`` (after it)."""
        gib = 2**30
        if self.device == "cuda":
            import torch

            peak = torch.cuda.max_memory_allocated()
            return {"peak_gib": peak / gib, "start_gib": (self.start or 0) / gib, "train_peak_gib": peak / gib}
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
        return {
            "peak_gib": peak / gib,
            "start_gib": (self.start or 0) / gib,
            "train_peak_gib": max(self.sampled_peak, current_rss()) / gib,
        }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def child_env(device: str, threads: int | None, workdir) -> dict[str, str]:
    """Offline hub and datasets inside the work directory, no trackers, and the CPU settings of a child."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(workdir / "hf_home"),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
    }
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def summarise(runs: list[dict]) -> dict:
    """Medians over repeats (step times, memory, sections) plus the step-time spreads."""
    keys = ("step_s", "cpu_step_s", "peak_gib", "start_gib", "train_peak_gib")
    out: dict = {key: median([r[key] for r in runs]) for key in keys}
    for key in ("step_s", "cpu_step_s"):
        out[f"{key}_runs"] = [r[key] for r in runs]
    out["threads"], out["device_name"] = runs[0]["threads"], runs[0]["device_name"]
    for key in ("sections", "cpu_sections"):
        if key in runs[0]:
            out[key] = {name: median([r[key][name] for r in runs]) for name in runs[0][key]}
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x{os.cpu_count()}" if names else platform.machine()
    except OSError:
        return platform.machine()


def run_side(script: str, args, which: str, workdir, repeat: int) -> dict:
    """Run ``script`` again as the child ``which`` (same command-line arguments), in a fresh output directory."""
    out = workdir / f"out-{which}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, script, *sys.argv[1:], "--child", which, "--workdir", str(workdir), "--out", str(out)]
    try:
        return run_child(cmd, which, env=child_env(args.device, args.threads, workdir))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def check_timing_args(parser, args) -> None:
    """``--clock auto`` resolved (CPU time on a CPU, where other jobs share the cores; wall time on a GPU), and at
    least one timed step after the first and the warm-up."""
    if args.clock == "auto":
        args.clock = "cpu" if args.device == "cpu" else "wall"
    if args.steps < args.warmup + 2:
        parser.error(f"--steps {args.steps} leaves no timed step after the first and --warmup {args.warmup}.")
