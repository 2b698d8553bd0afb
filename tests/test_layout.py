"""How ``kkoma transcribe`` uses the machine (offline/transcribe.py: choose_layout, usable_cores, cgroup quotas) and
the one process pool of the offline jobs (offline/pool.py).

The layout rule is tested with fake core counts and fake cgroup files; whether it is the fastest is measured by
benchmarks/bench_jobs_layout.py, never timed here.
"""
import os

import pytest

import kkoma.offline.transcribe as T
from kkoma.models.settings import load_settings
from kkoma.offline.pool import run_pool
from kkoma.offline.transcribe import Layout, cgroup_cpu_limit, choose_layout


# ---- the rule --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cores, files, processes, threaded", [
    (1, 10, 1, False),   # one core: one thread (a second one would only take turns with the first)
    (2, 10, 1, True),    # the shipped machine: one process, both threads
    (3, 10, 1, True),    # a third core is not two spare ones
    (4, 10, 2, True),    # four cores: two processes of two threads
    (7, 10, 3, True),
    (16, 10, 8, True),
    (16, 3, 3, True),    # never more processes than files
    (16, 1, 1, True),
    (2, 0, 1, True),     # no files: still a valid layout
])
def test_automatic_layout(cores, files, processes, threaded):
    got = choose_layout(cores, files)
    assert (got.processes, got.threaded, got.cores) == (processes, threaded, cores)
    assert got.processes * (2 if got.threaded else 1) <= max(cores, 1)  # two cores per threaded process


@pytest.mark.parametrize("cores, files, jobs, processes, threaded", [
    (2, 10, 1, 1, True),
    (2, 10, 2, 2, False),   # -j 2 on two cores: one thread each
    (4, 10, 2, 2, True),    # -j 2 on four cores: two threads each
    (4, 10, 4, 4, False),
    (8, 3, 6, 3, True),     # capped by the files; the 3 processes run have two cores each
    (3, 10, 2, 2, False),
])
def test_fixed_number_of_processes(cores, files, jobs, processes, threaded):
    got = choose_layout(cores, files, jobs)
    assert (got.processes, got.threaded) == (processes, threaded)


def test_describe_names_processes_threads_and_cores():
    assert Layout(1, True, 2).describe() == "1 process x 3 threads on 2 cores"
    assert Layout(3, False, 3).describe() == "3 processes x 1 thread on 3 cores"


# ---- cores this process may use ----------------------------------------------------------------------------------
def _cgroup_v2(tmp_path, limits: dict):
    """A fake /sys/fs/cgroup (v2) with cpu.max files at the given relative folders, and /proc/self/cgroup."""
    root = tmp_path / "cg"
    for rel, text in limits.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kk/job\n")
    return root, proc


@pytest.mark.parametrize("limits, want", [
    ({"kk/job": "150000 100000"}, 1.5),
    ({"kk/job": "max 100000", "kk": "300000 100000"}, 3.0),       # the parent's quota applies to the child
    ({"kk/job": "400000 100000", "": "100000 50000"}, 2.0),       # the tightest along the path wins
    ({"kk/job": "max 100000"}, None),
    ({}, None),
])
def test_cgroup_v2_quota(tmp_path, limits, want):
    root, proc = _cgroup_v2(tmp_path, limits)
    assert cgroup_cpu_limit(root, proc) == want


def test_cgroup_v1_quota(tmp_path):
    d = tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("250000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) == 2.5
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) is None


def test_no_cgroup_file_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path, tmp_path / "missing") is None


@pytest.mark.parametrize("affinity, quota, want", [
    (8, None, 8),
    (8, 2.4, 2),
    (8, 1.5, 2),   # a quota of 1.5 cores still gives a second thread half a core
    (8, 0.3, 1),
    (2, 6.0, 2),   # taskset to two cores inside a six-core quota
])
def test_usable_cores_is_affinity_capped_by_quota(monkeypatch, affinity, quota, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(T, "cgroup_cpu_limit", lambda: quota)
    assert T.usable_cores() == want


def test_usable_cores_on_this_machine_is_at_most_its_cpus():
    assert 1 <= T.usable_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("jobs, cores, files, want", [(0, 2, 5, Layout(1, True, 2)), (0, 8, 5, Layout(4, True, 8)),
                                                      (3, 2, 5, Layout(3, False, 2))])
def test_resolve_layout_reads_transcribe_jobs(monkeypatch, jobs, cores, files, want):
    monkeypatch.setattr(T, "usable_cores", lambda: cores)
    s = load_settings(overrides=[f"transcribe.jobs={jobs}"])
    assert T.resolve_layout(s, files) == want
    assert T.resolve_layout(s, files, n_jobs=1) == Layout(1, cores >= 2, cores)  # -j wins over the config


def test_one_process_layout_runs_files_in_the_threads_it_says(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(T, "run_job", lambda job, s, tr, progress=None, threaded=True: seen.append(threaded)
                        or T.FileOutcome(job.display, "done"))
    jobs = [T.Job(tmp_path / f"{i}.wav", {}, str(i)) for i in range(2)]
    for threaded in (True, False):
        seen.clear()
        T.run_jobs(jobs, load_settings(), layout=Layout(1, threaded, 2), factory=lambda s: None)
        assert seen == [threaded, threaded]


# ---- the pool ----------------------------------------------------------------------------------------------------
def _square(x):
    if x == "boom":
        raise ValueError("bad item")
    if x == "die":
        os._exit(3)
    return x * x


def test_pool_returns_every_result_once():
    got = {}
    run_pool(_square, range(7), workers=2, on_result=got.__setitem__)
    assert got == {i: i * i for i in range(7)}


def test_pool_errors_raise_unless_handled():
    with pytest.raises(ValueError, match="bad item"):
        run_pool(_square, [1, "boom", 2], workers=2, on_result=lambda i, r: None)
    got = {}
    run_pool(_square, [1, "boom", 2], workers=2, on_result=got.__setitem__,
             on_error=lambda item, e: f"failed: {e}")
    assert got == {1: 1, "boom": "failed: bad item", 2: 4}


def test_pool_worker_death_fails_its_item_and_the_run_goes_on_reporting():
    got = {}
    run_pool(_square, [1, "die", 2, 3], workers=1, in_flight=1, on_result=got.__setitem__,
             on_error=lambda item, e: type(e).__name__)
    assert got[1] == 1 and got["die"] == "BrokenProcessPool"
    assert set(got) == {1, "die", 2, 3}  # every item reported, none silently lost


def test_pool_interrupt_keeps_finished_work_and_raises():
    got, told = [], []

    def on_result(item, result):
        got.append(item)
        if len(got) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pool(_square, range(20), workers=2, on_result=on_result, on_interrupt=lambda: told.append(1))
    assert told == [1]
    assert 1 <= len(got) <= 4 + 1  # the first result, then at most the items in flight (2 per worker)


# ---- the command -------------------------------------------------------------------------------------------------
def test_cli_help_and_error_say_what_jobs_0_means(capsys, tmp_path):
    from kkoma.cli import main

    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    assert "0 = automatic" in " ".join(capsys.readouterr().out.split())
    assert main(["transcribe", str(tmp_path), "--jobs", "-1"]) == 1
    assert "--jobs must be 0 (automatic) or more" in capsys.readouterr().err
