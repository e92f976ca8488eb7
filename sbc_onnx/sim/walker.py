"""The graph walker: steps every node of a NIR graph through time, batched over samples.

Per time step, nodes run in topological order; a node's input is the sum of its predecessors' outputs at
this step plus, for edges that close a cycle, the source's output at the previous step (zero at t=0).
Nothing is stored per step except what the caller asks for: observers see node inputs/outputs as they are
produced (calibration uses this), spike counts are summed on the fly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import nir
import numpy as np

from ..errors import SbcError
from ..graph import FlatGraph, flatten, node_shape
from .config import SimConfig, config_for
from .ops import build_op

Observer = Callable[[int, np.ndarray], None]


@dataclass
class RunResult:
    steps: int
    outputs: dict[str, np.ndarray]  # output name -> (T, B, *shape) (or final value if not recorded)
    counts: dict[str, np.ndarray]  # spiking node -> (B, *shape) spikes summed over time
    states: dict[str, Any] = field(default_factory=dict)  # final neuron states


class Walker:
    def __init__(self, graph: nir.NIRGraph | FlatGraph, cfg: SimConfig | None = None):
        self.fg = graph if isinstance(graph, FlatGraph) else flatten(graph)
        if cfg is None:  # a NIR graph's own metadata (a note names what is assumed); a flat view has none
            cfg = SimConfig() if isinstance(graph, FlatGraph) else config_for(graph)
        self.cfg = cfg
        self.ops = {n: build_op(n, self.fg.nodes[n], self.cfg) for n in self.fg.order}
        if not self.fg.inputs:
            raise SbcError("the graph has no Input node")
        self.spiking = [n for n in self.fg.order if self.ops[n].spiking]

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return node_shape(self.fg.nodes[self.fg.inputs[0]], "output")

    def run(
        self,
        x: np.ndarray | Mapping[str, np.ndarray],
        *,
        on_input: Mapping[str, Observer] | None = None,
        on_output: Mapping[str, Observer] | None = None,
        on_state: Mapping[str, Callable[[int, Any], None]] | None = None,
        on_step: Callable[[int], None] | None = None,
        record_outputs: bool = True,
    ) -> RunResult:
        """Simulate. `x` is (T, B, *input_shape) for a single-input graph, or {input name: array}.

        on_input[n](t, x)  receives the (summed) input of node n at step t;
        on_output[n](t, y) its output; on_state[n](t, state) its state after the step (e.g. {"v": ...});
        on_step(t) is called after every step (progress bars).
        """
        xs = x if isinstance(x, Mapping) else {self.fg.inputs[0]: x}
        missing = set(self.fg.inputs) - set(xs)
        if missing:
            raise SbcError(f"no data for graph input(s) {sorted(missing)}")
        steps = {int(np.shape(a)[0]) for a in xs.values()}
        if len(steps) != 1:
            raise SbcError("all inputs must have the same number of time steps")
        T = steps.pop()
        dtype = np.dtype(self.cfg.dtype)
        on_input, on_output, on_state = on_input or {}, on_output or {}, on_state or {}
        fg, ops = self.fg, self.ops

        states: dict[str, Any] = {}
        prev: dict[str, Any] = {}  # last step's outputs of back-edge sources
        back_sources = {s for s, _ in fg.back_edges}
        counts: dict[str, np.ndarray] = {}
        recorded: dict[str, list[np.ndarray]] = {o: [] for o in fg.outputs}
        last: dict[str, np.ndarray] = {}

        for t in range(T):
            out: dict[str, np.ndarray] = {}
            for n in fg.order:
                if n in xs:
                    inp = np.asarray(xs[n][t], dtype=dtype)
                else:
                    inp = None
                    for p in fg.preds[n]:
                        inp = out[p] if inp is None else inp + out[p]
                    for p in fg.back_preds[n]:
                        v = prev.get(p)
                        if v is None:
                            shape = node_shape(fg.nodes[p], "output")
                            if shape is None:
                                continue
                            v = np.zeros((self._batch(xs),) + shape, dtype=dtype)
                        inp = v if inp is None else inp + v
                    if inp is None:
                        raise SbcError(f"node {n!r} receives no input at step {t}")
                if n in on_input:
                    on_input[n](t, inp)
                if n not in states:
                    states[n] = ops[n].init_state(inp)
                y, states[n] = ops[n].step(inp, states[n])
                out[n] = y
                if n in on_output:
                    on_output[n](t, y)
                if n in on_state:
                    on_state[n](t, states[n])
                if ops[n].spiking:
                    counts[n] = y.copy() if n not in counts else counts[n] + y
            for s in back_sources:
                prev[s] = out[s]
            for o in fg.outputs:
                if record_outputs:
                    recorded[o].append(out[o])
                last[o] = out[o]
            if on_step is not None:
                on_step(t)
        outputs = {o: (np.stack(recorded[o]) if record_outputs else last[o]) for o in fg.outputs}
        return RunResult(steps=T, outputs=outputs, counts=counts, states=states)

    @staticmethod
    def _batch(xs: Mapping[str, np.ndarray]) -> int:
        return int(np.shape(next(iter(xs.values())))[1])


def simulate(graph: nir.NIRGraph, x: np.ndarray, cfg: SimConfig | None = None, **kw) -> RunResult:
    return Walker(graph, cfg).run(x, **kw)
