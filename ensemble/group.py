"""A group of particles in one process: the unit a worker (Ray actor or the driver) holds.

The group rebuilds prior, operator and solver from the spec, runs ``solver.step`` on its batch,
reports features and measurement losses, and exports, imports and restores particle states
(payloads of CPU tensors and generator states) for pruning, resampling and checkpoints.
"""

from __future__ import annotations

import itertools
import socket
import sys
import time
from typing import Any

import torch

from ensemble.features import FeatureMap
from ensemble.payload import Payload
from ensemble.settings import Repulsion
from ensemble.spec import EnsembleSpec
from operators import Operator, stack_rows
from solvers.base import STATUS_PRUNED, State, particle_seed
from solvers.priors.base import PriorLoadError
from solvers.priors.loading import load


class ParticleGroup:
    """Particles with global slot numbers ``slots`` of the run described by ``spec``."""

    def __init__(self, spec: EnsembleSpec, slots: list[int], threads: int = 0) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        prior_options = {} if spec.device == "cpu" else {"device": spec.device}
        try:
            self.prior = load(spec.prior, **prior_options)
        except PriorLoadError as err:
            node = _cluster_node()
            if node is None:
                raise
            raise type(err)(
                f"{err} [on cluster node {node}: every path the config names must exist on "
                "every node, or on storage the nodes share]"
            ) from err
        self.features = FeatureMap(spec.settings.features, self.prior, spec.settings.dino_model)
        self.reset(spec, slots)

    def reset(self, spec: EnsembleSpec, slots: list[int]) -> None:
        """Take on a new run that shares this group's prior and features (``worker_key``)."""
        self.spec = spec
        self.slots = list(slots)
        self.operator = group_operator(spec, self.slots)
        self.solver = spec.solver.build()
        self.state: State | None = None
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None
        self._nfe_at_reset = self.prior.nfe

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Initialise the rows of this group: row (problem p, particle i) draws the stream of
        particle i of a single-problem run seeded by ``seeds[p]``, whatever the batch."""
        spec = self.spec
        if spec.problems == 1:  # one measurement, broadcast to every row
            y, seed = spec.y, spec.seeds[0]
        else:
            problems = [spec.problem_of(s) for s in self.slots]
            y, seed = spec.y[problems], [spec.seeds[p] for p in problems]
        indices = [spec.particle_of(s) for s in self.slots]
        self.state = self.solver.init(
            self.prior, self.operator, y.to(spec.device), seed=seed, indices=indices
        )

    def observe(self, k: int, repulsion: Repulsion, lookahead: bool = False) -> dict[str, Any]:
        """Losses, status and noise level before step ``k``; features where repulsion acts;
        with ``lookahead`` also the loss of each particle's denoised estimate.

        The noise level is that of the current state (after step k - 1; the first step's level
        before step 0).
        """
        began = time.perf_counter()
        state = self._state()
        sigma = self.solver.noise_level(max(k - 1, 0))
        out: dict[str, Any] = {
            "loss": self.solver.measurement_loss(state).double().cpu(),
            "status": state.status.cpu(),
            "sigma": sigma,
            "sigma_y": float(self.operator.sigma),
            "nfe": self.nfe(),
            "features": None,
            "log_weight": self.log_weights(),
            "lookahead_loss": self.solver.lookahead_loss(state, k) if lookahead else None,
        }
        self._graph = None
        if repulsion.active(sigma):
            leaf, features = self.features(state)
            self._graph = (leaf, features)
            out["features"] = features.detach().double().cpu()
        out["seconds"] = time.perf_counter() - began
        return out

    def step(self, k: int, push: torch.Tensor | None, weight: float) -> float:
        """Solver step ``k``; ``push`` (this group's rows) becomes ``weight`` x its pull-back."""
        began = time.perf_counter()
        state = self._state()
        force = None
        if push is not None:
            if self._graph is None:
                raise RuntimeError("step received a push without an observe(want_features) first")
            leaf, features = self._graph
            force = weight * self.features.pullback(leaf, features, push).to(state.x)
            active = state.active.to(force.device)  # status may stay on the CPU
            force = torch.where(active.view(-1, *[1] * (force.dim() - 1)), force, 0.0)
        self._graph = None
        self.state = self.solver.step(state, k, force=force)
        return time.perf_counter() - began

    def samples(self) -> torch.Tensor:
        """Final samples in image space (CPU)."""
        return self.solver.result(self._state()).detach().cpu()

    def log_weights(self) -> torch.Tensor | None:
        """A weighted solver's latest log incremental weights (CPU float64), else None."""
        return self.solver.log_weight(self._state())

    def losses(self) -> torch.Tensor:
        return self.solver.measurement_loss(self._state()).double().cpu()

    def nfe(self) -> int:
        """Network evaluations of this run (since the last ``reset``)."""
        return self.prior.nfe - self._nfe_at_reset

    # -- moving particles ------------------------------------------------------------------------
    def export(self, positions: list[int]) -> Payload:
        """Copies of the particles at local ``positions`` (CPU tensors, generator states)."""
        state = self._state()
        return {
            "x": _take(state.x, positions).cpu(),
            "x0": _take(state.x0, positions).cpu(),
            "status": _take(state.status, positions).cpu(),
            "extra": {k: _take(v, positions).cpu() for k, v in state.extra.items()},
            "generators": [state.generators[i].get_state() for i in positions],
        }

    def assign(
        self, positions: list[int], payload: Payload | None, seeds: list[int] | None
    ) -> None:
        """Overwrite the particles at local ``positions``; ``seeds`` give them fresh streams."""
        if not positions or payload is None:
            return
        state = self._state()
        state.x = _put(state.x, positions, payload["x"])
        state.x0 = _put(state.x0, positions, payload["x0"])
        state.status = _put(state.status, positions, payload["status"])
        state.extra = {
            k: _put(v, positions, payload["extra"][k]) if k in payload["extra"] else v
            for k, v in state.extra.items()
        }
        for position, generator_state in zip(positions, payload["generators"], strict=True):
            state.generators[position].set_state(generator_state)
        if seeds is not None:
            state.reseed(positions, seeds)

    def prune(self, positions: list[int]) -> None:
        """Stop the particles at local ``positions`` (they lost a pruning round)."""
        state = self._state()
        pruned = torch.full((len(positions),), STATUS_PRUNED, dtype=state.status.dtype)
        state.status = _put(state.status, positions, pruned)

    def statuses(self) -> torch.Tensor:
        return self._state().status.cpu()

    def snapshot(self) -> Payload:
        """The whole group as a payload (a checkpoint)."""
        return self.export(list(range(len(self.slots))))

    def restore(self, payload: Payload) -> None:
        """Put the group back to a snapshot (starting it first if needed); its network-call
        count restarts at zero (the driver carries the calls made before the snapshot)."""
        if self.state is None:
            self.start()
        self.assign(list(range(len(self.slots))), payload, None)
        self._nfe_at_reset = self.prior.nfe

    def _state(self) -> State:
        if self.state is None:
            raise RuntimeError("the particle group has not been started")
        return self.state


def _take(tensor: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Rows ``positions`` of ``tensor``, indexed on the tensor's own device (a state's x may
    live on a GPU while its status stays on the CPU)."""
    return tensor[torch.as_tensor(positions, dtype=torch.long, device=tensor.device)]


def _put(tensor: torch.Tensor, positions: list[int], values: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` with rows ``positions`` set to ``values``, on the tensor's device."""
    out = tensor.clone()
    out[torch.as_tensor(positions, dtype=torch.long, device=tensor.device)] = values.to(out)
    return out


def _cluster_node() -> str | None:
    """This host's name when the process is a Ray worker (else None; ray is not imported for
    the question)."""
    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return socket.gethostname()


def group_operator(spec: EnsembleSpec, slots: list[int]) -> Operator:
    """The operator of a group's rows: the shared one, or the rows' problems' own operators
    stacked row by row (``operators.stack_rows``)."""
    if not isinstance(spec.operator, tuple):
        return spec.operator.build(spec.device)
    problems = [spec.problem_of(s) for s in slots]
    counts = [sum(1 for _ in run) for _, run in itertools.groupby(problems)]
    parts = [spec.operators[p].build(spec.device) for p, _ in itertools.groupby(problems)]
    return stack_rows(parts, counts)


def worker_key(spec: EnsembleSpec) -> str:
    """What a worker keeps between runs: prior, device, features, resources."""
    return repr(
        (
            spec.prior,
            spec.device,
            spec.settings.features,
            spec.settings.dino_model,
            spec.settings.cpus_per_worker,
            spec.settings.gpus_per_worker,
            spec.settings.address,
        )
    )


def copy_seed(problem_seed: int, particle: int, step: int) -> int:
    """The fresh stream of a copy placed in a problem's ``particle`` slot before ``step``
    (independent of workers and of the other problems in the batch)."""
    return particle_seed(particle_seed(problem_seed, particle), 1_000_003 + step)
