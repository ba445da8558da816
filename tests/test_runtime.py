"""runtime.configure_cpu: passive OpenMP waiting, threads from the usable CPUs, glibc malloc tuned;
the user's own settings win, DIFFSMOOTH_CPU_DEFAULTS=0 turns it off, and the CLI records it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from diffsmooth.cli import main
from diffsmooth.runtime import usable_cpus

PROBE = ("import json, os, sys; from diffsmooth.runtime import configure_cpu; done = configure_cpu(); "
         "import torch; print(json.dumps({**done, 'threads': torch.get_num_threads(), "
         "'policy': os.environ.get('OMP_WAIT_POLICY')}))")


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DIFFSMOOTH_CPU_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_defaults_set_passive_waiting_threads_and_malloc_before_torch():
    done = probe()
    assert done["omp_wait_policy"] == "PASSIVE" and done["policy"] == "PASSIVE"
    assert done["omp_num_threads"] == str(usable_cpus()) and done["threads"] == usable_cpus()
    assert done["malloc_tuned"] is True and done["before_torch"] is True


def test_the_users_settings_win_and_the_switch_turns_it_off():
    done = probe(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert done["policy"] == "ACTIVE" and done["threads"] == 1 and done["malloc_tuned"] is True
    off = probe(DIFFSMOOTH_CPU_DEFAULTS="0")
    assert off["policy"] is None and off["omp_num_threads"] is None and off["malloc_tuned"] is False


def test_usable_cpus_follows_the_affinity_mask():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_a_certify_manifest_records_the_threading(tmp_path, fmnist_dir, classifier_path):
    out = tmp_path / "r.tsv"
    assert main(["certify", "--method", "rs", "--data-dir", str(fmnist_dir), "--sigma", "0.25", "--classifier",
                 str(classifier_path), "--n0", "4", "--n", "8", "--max", "1", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    env = json.loads((tmp_path / "r.tsv.json").read_text())["environment"]
    assert env["torch_threads"] >= 1 and set(env["cpu_settings"]) == {"omp_wait_policy", "omp_num_threads",
                                                                      "malloc_tuned", "before_torch"}
