"""The thread guard's choice, on made-up run times (edgecc/runtime/loadguard.py)."""

from edgecc.runtime.loadguard import MAX_GAP_S, ThreadGuard


def _drive(guard, cost, runs, t0=0.0):
    """Run ``runs`` times; ``cost(threads)`` is a run's seconds. Returns (threads used, t)."""
    t, used = t0, []
    for _ in range(runs):
        n = guard.threads(t)
        t += cost(n)
        guard.record(n, cost(n), t)
        used.append(n)
    return used, t


def test_all_threads_stay_while_they_are_faster():
    g = ThreadGuard(2)
    used, _ = _drive(g, lambda n: 0.5e-3 if n == 2 else 0.7e-3, 3000)
    assert g.current == 2
    assert used.count(1) <= 2 * 12  # a handful of two-run probes, ever rarer


def test_a_busy_cpu_moves_to_one_thread_and_an_idle_one_back():
    g = ThreadGuard(2)
    _, t = _drive(g, lambda n: 0.5e-3 if n == 2 else 0.7e-3, 100)
    # busy: every all-thread run stalls for a time slice, one thread is steady
    used, t = _drive(g, lambda n: 150e-3 if n == 2 else 0.8e-3, 2000, t)
    assert g.current == 1
    stalls = used.count(2)
    assert stalls <= 8  # the first stall, then rare probes (<= 5% of the time)
    # idle again: all threads are back within a few gaps
    used, t = _drive(g, lambda n: 0.5e-3 if n == 2 else 0.7e-3, int(3 * MAX_GAP_S / 0.7e-3), t)
    assert g.current == 2


def test_probes_with_all_threads_on_a_busy_cpu_take_at_most_a_twentieth_of_the_time():
    g = ThreadGuard(2)
    _drive(g, lambda n: 0.5e-3 if n == 2 else 0.7e-3, 100)
    spent = {1: 0.0, 2: 0.0}

    def cost(n):
        return 200e-3 if n == 2 else 0.8e-3

    t = 1.0
    for _ in range(60000):  # ~50 s of runs
        n = g.threads(t)
        t += cost(n)
        spent[n] += cost(n)
        g.record(n, cost(n), t)
    assert spent[2] / (spent[1] + spent[2]) <= 0.08


def test_one_thread_is_left_alone():
    g = ThreadGuard(1)
    assert _drive(g, lambda n: 1e-3, 100)[0] == [1] * 100
