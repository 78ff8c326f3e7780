"""The solver-overhead benchmark: call recording, NFE, timings, the overhead formula, memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import solvers
from experiments.benchmarks import solver_overhead as bench
from experiments.benchmarks.solver_overhead import CallKey, Case, Problem, Row, Timing
from solvers import SolverSpec
from solvers.priors.gmm import mcgdiff_problem

D = 4  # the benchmark itself runs the shipped priors; here the analytic GMM keeps tests fast


@pytest.fixture(scope="module")
def gmm():
    p = mcgdiff_problem(D, 2, seed=0)
    return Problem(p.prior, p.operator, p.y)


def test_every_registered_solver_has_a_case():
    # a solver without a tuned case in CASES gets one from its presets (no edit here needed)
    cases = bench.cases()
    assert {case.spec.name for case in cases} == set(solvers.available())
    tuned = {case.spec.name for case in bench.CASES}
    for case in cases:
        if case.spec.name not in tuned:
            assert case == bench.default_case(case.spec.name)


def test_dps_run_counts_one_graph_call_per_step_and_times_it(gmm):
    case = Case("dps", SolverSpec("dps", "gmm", {"num_steps": 3}), "gmm", True)
    row = bench.measure(case, gmm, n=2, repeats=1, calls_per_repeat=2)
    key = CallKey("denoise", (2, D), True)
    assert row.nfe == 3 and row.steps == 3  # Result.nfe: batched calls, one per DPS step
    assert row.calls == {key: 3}
    timing = row.call_times[key]
    assert timing.wall > 0 and timing.cpu > 0 and row.run.wall > 0
    assert row.denoiser_seconds() == pytest.approx(3 * timing.wall)
    assert row.overhead("wall") == pytest.approx(row.run.wall / (3 * timing.wall) - 1)
    for clock in bench.CLOCKS:  # time inside the run's own calls: a positive share of the run
        assert -1 < row.in_run[bench.DENOISER_METHODS][clock] < float("inf")
    # x and x0: D numbers each; a CPU generator's state is 5056 bytes
    assert row.state_bytes == 2 * D * gmm.prior.dtype.itemsize + 5056


def test_daps_calls_the_denoiser_without_graph_ode_steps_times(gmm):
    overrides = {"annealing_steps": 2, "ode_steps": 3}
    case = Case("daps", SolverSpec("daps", "gmm/pixel_hmc", overrides), "gmm", True)
    row = bench.measure(case, gmm, n=2, repeats=2, calls_per_repeat=1)
    assert row.nfe == 6 and row.calls == {CallKey("denoise", (2, D), False): 6}


def test_overhead_formula_on_given_numbers():
    denoise, decode = CallKey("denoise", (4, 2), True), CallKey("decode", (4, 2), True)
    row = Row(
        case=Case("x", SolverSpec("dps"), "digits"),
        n=4,
        steps=10,
        nfe=10,
        run=Timing(wall=0.33, cpu=0.2),
        calls={denoise: 10, decode: 4},
        call_times={denoise: Timing(0.02, 0.01), decode: Timing(0.05, 0.04)},
        state_bytes=0.0,
    )
    assert row.denoiser_seconds() == pytest.approx(0.2)  # 10 x 20 ms
    assert row.overhead("wall") == pytest.approx(0.33 / 0.2 - 1)  # +65%
    assert row.overhead("cpu") == pytest.approx(0.2 / 0.1 - 1)  # +100%
    network = bench.predicted_seconds(row.calls, row.call_times, bench.NETWORK_METHODS)
    assert network == pytest.approx(0.4)  # + 4 x 50 ms of decoder
    assert row.overhead("wall", bench.NETWORK_METHODS) == pytest.approx(0.33 / 0.4 - 1)
    assert bench.overhead(1.0, 0.0) == float("inf")


def test_recording_tells_graph_calls_apart_times_backward_and_restores_the_prior(gmm):
    prior = gmm.prior
    x = torch.zeros(3, *prior.shape)
    with bench.recording(prior) as log:
        with torch.no_grad():
            prior.denoise(x, 1.0)
        x_in = x.clone().requires_grad_(True)
        out = prior.denoise(x_in, 1.0)
        prior.denoise(x.clone().requires_grad_(True), 2.0)  # graph built, never backpropagated
        torch.autograd.grad(out.pow(2).sum(), x_in)
    shape = (3, *prior.shape)
    assert log.counts == {CallKey("denoise", shape, False): 1, CallKey("denoise", shape, True): 2}
    assert [len(marks) for _, marks in log.stamps] == [2, 4, 2]  # forward; + backward bracket
    walls = [mark.wall for mark in log.stamps[1][1]]
    assert walls == sorted(walls)
    assert "denoise" not in vars(prior)


def test_time_inside_calls_sums_forward_and_backward_brackets():
    def stamps(*walls: float) -> list[Timing]:
        return [Timing(w, w / 2) for w in walls]

    log = bench.CallLog(
        stamps=[
            ("denoise", stamps(0.0, 1.0)),
            ("decode", stamps(1.0, 3.0)),
            ("denoise", stamps(3.0, 3.5, 5.0, 5.25)),
        ]
    )
    assert log.inside(bench.DENOISER_METHODS) == Timing(1.75, 0.875)
    assert log.inside(bench.NETWORK_METHODS) == Timing(3.75, 1.875)


def test_peak_bytes_sees_two_live_megabytes():
    def allocate() -> None:
        a = torch.ones(250_000)
        b = torch.ones(250_000)
        del a, b

    peak = bench.peak_allocated_bytes(allocate)
    assert 2_000_000 <= peak < 2_100_000


def test_target_is_judged_on_the_in_run_overhead_beyond_all_network_calls():
    key = CallKey("denoise", (4, 2), False)
    row = Row(
        case=Case("x", SolverSpec("daps"), "digits", target=True),
        n=4,
        steps=10,
        nfe=10,
        run=Timing(wall=1.0, cpu=1.0),
        calls={key: 10},
        call_times={key: Timing(0.05, 0.05)},  # isolated: +100%, not what is judged
        state_bytes=0.0,
        in_run={bench.NETWORK_METHODS: {"wall": 0.08, "cpu": 0.12}},
    )
    assert bench.target_met(row) == "**yes / no**"
    row.in_run[bench.NETWORK_METHODS]["cpu"] = 0.09
    assert bench.target_met(row) == "yes / yes"
    untargeted = dataclasses.replace(row, case=Case("x", SolverSpec("cdps"), "digits"))
    assert bench.target_met(untargeted) == "n/a"
