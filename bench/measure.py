"""Run a Python program in a child process and report its wall time and peak RSS (VmHWM of the child itself).

VmHWM comes from the child's own /proc/self/status at exit: a fresh address space after exec, unlike ru_maxrss of a
forked child, which also counts the parent's memory before exec.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

_RUNNER = r"""
import atexit, runpy, sys
def _report():
    hwm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))
    print('@@PEAK_RSS@@', hwm, file=sys.stderr, flush=True)
atexit.register(_report)
mode, target, *args = sys.argv[1:]
if mode == 'code':
    sys.argv = ['-c', *args]
    exec(compile(target, '<bench>', 'exec'), {'__name__': '__main__'})
else:
    sys.argv = [target, *args]
    if mode == 'script':
        import os
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # as `python script.py` does
        runpy.run_path(target, run_name='__main__')
    else:
        runpy.run_module(target, run_name='__main__', alter_sys=True)
"""


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_rss: int
    stdout: str
    stderr: str


def run_python(mode: str, target: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """``mode``: 'module' (python -m target), 'script' (a .py path) or 'code' (source text)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUNNER, mode, target, *args], capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{target} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("@@PEAK_RSS@@"))
    return Run(wall, peak, done.stdout, done.stderr)
