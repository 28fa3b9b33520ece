"""Per-step cost of coordinate-task training (circle, 10 seeds vmapped, full batch) at two revisions.

    git worktree add /tmp/rtjax-before debac77     # the revision before the speed work
    python benchmarks/coordinate-step/measure.py /tmp/rtjax-before .   # writes results.{json,md} here

Each revision runs in its own process with its own experiment code: E1 and E2 epochs of one method
(all seeds in one compiled program); the per-epoch time is (t(E2) - t(E1)) / (E2 - E1), which removes
compilation (the old code compiles in every call; the new one reuses its programs, so it is warmed up
by a first call). The same machine, the same run, one after the other.
"""
import json
import os
import pathlib
import platform
import subprocess
import sys
import textwrap

E1, E2 = 500, 2500
METHODS = {"baseline": (0.0, None), "ot": (100.0, 0.01)}

OLD = textwrap.dedent("""
    import json, sys
    from rtjax import coordinate
    from rtjax.data import coordinate_dataset
    data = coordinate_dataset("circle", 0)
    out = {}
    for method, (lam, gamma) in json.loads(sys.argv[1]).items():
        times = []
        for epochs in (%d, %d):
            s, _, _ = coordinate.train_method(data, method, list(range(10)), lam=lam, epsilon=gamma or 0.1,
                                              protocol=coordinate.Protocol(epochs=epochs), progress=False)
            times.append(s["wall_time_s"])
        out[method] = times
    print(json.dumps(out))
""" % (E1, E2))  # noqa: UP031 - the code holds braces

NEW = textwrap.dedent("""
    import dataclasses, json, sys
    from experiments.coordinate import configs, train
    from experiments.coordinate.data import coordinate_dataset
    data = coordinate_dataset("circle", 0)
    out = {}
    for method, (lam, gamma) in json.loads(sys.argv[1]).items():
        times = []
        for epochs in (%d, %d, %d):  # the first call compiles (later calls reuse the program)
            protocol = dataclasses.replace(configs.Protocol(), epochs=epochs, seeds=10)
            s, _, _ = train.fit(data, train.Unit("circle", method, lam, gamma), range(10), protocol)
            times.append(s["wall_time_s"])
        out[method] = times[1:]
    print(json.dumps(out))
""" % (E1, E1, E2))  # noqa: UP031 - the code holds braces


def measure(root: str, code: str) -> dict:
  out = subprocess.run([sys.executable, "-c", code, json.dumps(METHODS)], cwd=root, check=True,
                       capture_output=True, text=True, env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
  times = json.loads(out.stdout.strip().splitlines()[-1])
  return {m: 1e3 * (t2 - t1) / (E2 - E1) for m, (t1, t2) in times.items()}


def main() -> None:
  before, after = sys.argv[1], sys.argv[2]
  rev = lambda root: subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
  report = {"machine": f"{platform.machine()} cpu, {os.cpu_count()} cores", "python": platform.python_version(),
            "epochs": [E1, E2], "seeds": 10,
            "before": {"revision": rev(before), "ms_per_step": measure(before, OLD)},
            "after": {"revision": rev(after), "ms_per_step": measure(after, NEW)}}
  here = pathlib.Path(__file__).parent
  (here / "results.json").write_text(json.dumps(report, indent=1))
  rows = [f"| {m} | {report['before']['ms_per_step'][m]:.2f} | {report['after']['ms_per_step'][m]:.2f} | "
          f"{report['before']['ms_per_step'][m] / report['after']['ms_per_step'][m]:.1f}x |" for m in METHODS]
  (here / "results.md").write_text("\n".join([
      f"# Coordinate training step, circle, 10 seeds vmapped ({report['machine']}, Python {report['python']})", "",
      f"ms per step (all 10 seeds), from the time of {E2} minus {E1} epochs; +L_ot: lambda 100, gamma 0.01.", "",
      f"| method | before ({report['before']['revision']}) | after ({report['after']['revision']}) | speed-up |",
      "|---|---|---|---|", *rows, ""]))
  print((here / "results.md").read_text())


if __name__ == "__main__":
  main()
