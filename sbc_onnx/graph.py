"""A flat, ordered view of a NIR graph for simulation and compression.

Nested NIRGraph nodes are flattened into dotted names ("sub.node"); the node objects are the graph's own
(not copies), so rewriting a weight through the flat view rewrites the original graph. Node order in
NIR files is alphabetical, so we order nodes ourselves: a depth-first search from the inputs marks the
edges that close a cycle as back edges (read at t-1 by the walker); the rest is sorted topologically."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nir
import numpy as np

from .errors import SbcError
from .primitives import LINEAR, NEURON, PORT, WEIGHT, Primitive, lookup


@dataclass
class FlatGraph:
    nodes: dict[str, Any]
    edges: list[tuple[str, str]]
    inputs: list[str]
    outputs: list[str]
    order: list[str] = field(default_factory=list)
    back_edges: set[tuple[str, str]] = field(default_factory=set)
    preds: dict[str, list[str]] = field(default_factory=dict)  # forward predecessors (same step)
    back_preds: dict[str, list[str]] = field(default_factory=dict)  # read from the previous step
    succs: dict[str, list[str]] = field(default_factory=dict)

    def kind(self, name: str) -> str:
        return type(self.nodes[name]).__name__

    # ---- queries through the primitive catalogue ------------------------------------------------------
    def prim(self, name: str) -> Primitive | None:
        """Catalogue entry of node `name` (None for a kind outside the catalogue)."""
        return lookup(self.nodes[name])

    def role(self, name: str) -> str | None:
        p = self.prim(name)
        return None if p is None else p.role

    def of_role(self, role: str) -> list[str]:
        """Nodes with that role, in simulation order."""
        return [n for n in self.order if self.role(n) == role]

    def weight_nodes(self) -> list[str]:
        return self.of_role(WEIGHT)

    def neurons(self) -> list[str]:
        return self.of_role(NEURON)

    def spiking(self) -> list[str]:
        """Nodes whose output is spikes (spiking neurons and Threshold), in simulation order."""
        return [n for n in self.order if (p := self.prim(n)) is not None and p.spiking]

    def passes_through(self, name: str) -> bool:
        """A stateless-linear node the signal crosses unchanged in kind (Scale, pooling, Flatten, Delay,
        the inner ports of a subgraph); the graph's own Input/Output nodes are ends, not pass-throughs."""
        role = self.role(name)
        return role == LINEAR or (role == PORT and name not in self.inputs and name not in self.outputs)

    def paths_to_neurons(self, layer: str) -> tuple[list[list[str]], list[str]]:
        """Paths layer -> ... -> neuron through pass-through nodes, and the other sinks reached (graph
        outputs, weight layers, nodes of other roles)."""
        paths, sinks = [], []
        stack = [[layer, s] for s in self.succs[layer]]
        while stack:
            p = stack.pop()
            n = p[-1]
            if self.role(n) == NEURON:
                paths.append(p)
            elif self.passes_through(n) and n not in p[:-1]:
                stack.extend(p + [s] for s in self.succs[n])
            else:
                sinks.append(n)
        return paths, sinks

    def fed_neurons(self, layer: str) -> list[str]:
        """The neurons reached first from `layer` through pass-through nodes, nearest first."""
        seen, frontier, found = {layer}, list(self.succs[layer]), []
        while frontier:
            nxt = []
            for n in frontier:
                if n in seen:
                    continue
                seen.add(n)
                if self.role(n) == NEURON:
                    found.append(n)
                elif self.passes_through(n):
                    nxt.extend(self.succs[n])
            frontier = nxt
        return list(dict.fromkeys(found))

    def sources_of(self, name: str) -> set[str]:
        """Nodes that feed `name` through pass-through nodes (weight layers, inputs, neurons, ...)."""
        out, seen = set(), set()
        stack = list(self.preds[name]) + list(self.back_preds[name])
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if self.passes_through(n):
                stack.extend(self.preds[n] + self.back_preds[n])
            else:
                out.add(n)
        return out


def _flatten(graph: nir.NIRGraph, prefix: str, nodes: dict, edges: list) -> tuple[list[str], list[str]]:
    """Add graph's nodes/edges under prefix; return the (prefixed) names of its Input and Output nodes."""
    ins, outs = [], []
    ports: dict[str, tuple[list[str], list[str]]] = {}
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            ports[name] = _flatten(node, full + ".", nodes, edges)
        else:
            nodes[full] = node
            if isinstance(node, nir.Input):
                ins.append(full)
            elif isinstance(node, nir.Output):
                outs.append(full)

    def endpoint(name: str, as_source: bool) -> str:
        if name in ports:
            sub_in, sub_out = ports[name]
            chosen = sub_out if as_source else sub_in
            if len(chosen) != 1:
                raise SbcError(f"edge addresses subgraph {prefix + name!r}, which has {len(chosen)} "
                               f"{'outputs' if as_source else 'inputs'}; address one as '{name}.<port>'")
            return chosen[0]
        full = prefix + name
        if full not in nodes:
            raise SbcError(f"edge refers to unknown node {full!r}")
        return full

    for src, dst in graph.edges:
        edges.append((endpoint(src, True), endpoint(dst, False)))
    return ins, outs


def flatten(graph: nir.NIRGraph) -> FlatGraph:
    if not isinstance(graph, nir.NIRGraph):
        raise SbcError(f"expected a NIR graph, got {type(graph).__name__}")
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    ins, outs = _flatten(graph, "", nodes, edges)
    # Inner Input/Output nodes of subgraphs are pass-throughs; only the top level's are graph ports.
    top_in = [n for n in ins if "." not in n]
    top_out = [n for n in outs if "." not in n]
    fg = FlatGraph(nodes=nodes, edges=list(dict.fromkeys(edges)), inputs=sorted(top_in), outputs=sorted(top_out))
    _order(fg)
    return fg


def _order(fg: FlatGraph) -> None:
    succ: dict[str, list[str]] = {n: [] for n in fg.nodes}
    pred: dict[str, list[str]] = {n: [] for n in fg.nodes}
    for s, d in fg.edges:
        succ[s].append(d)
        pred[d].append(s)
    # DFS from inputs first, then from nodes without predecessors, then anything left (pure cycles).
    starts = fg.inputs + sorted(n for n in fg.nodes if not pred[n] and n not in fg.inputs) + sorted(fg.nodes)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    back: set[tuple[str, str]] = set()
    for root in starts:
        if root in state:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    # Kahn's algorithm on the forward edges; ties broken by the order nodes were discovered.
    rank = {n: i for i, n in enumerate(dict.fromkeys(starts))}
    fwd_pred = {n: [p for p in pred[n] if (p, n) not in back] for n in fg.nodes}
    indeg = {n: len(fwd_pred[n]) for n in fg.nodes}
    ready = sorted((n for n in fg.nodes if indeg[n] == 0), key=rank.get)
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for d in succ[n]:
            if (n, d) in back:
                continue
            indeg[d] -= 1
            if indeg[d] == 0:
                ready.append(d)
                ready.sort(key=rank.get)
    if len(order) != len(fg.nodes):  # cannot happen after cutting DFS back edges; guard anyway
        raise SbcError("could not order the graph's nodes (cycle without a back edge)")
    fg.order = order
    fg.back_edges = back
    fg.preds = fwd_pred
    fg.back_preds = {n: [p for p in pred[n] if (p, n) in back] for n in fg.nodes}
    fg.succs = succ


def node_shape(node: Any, which: str = "output") -> tuple[int, ...] | None:
    """The node's (batch-less) input or output shape if NIR knows it."""
    t = getattr(node, f"{which}_type", None)
    if not t:
        return None
    v = next(iter(t.values()))
    if v is None:
        return None
    a = np.asarray(v).reshape(-1)
    if a.size == 0 and np.asarray(v).ndim == 1:
        return ()
    try:
        return tuple(int(x) for x in a)
    except (TypeError, ValueError):
        return None


def param_count(node: Any) -> int:
    total = 0
    for f in getattr(node, "__dataclass_fields__", {}):
        if f in ("input_type", "output_type", "metadata"):
            continue
        v = getattr(node, f)
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiu" and f in ("weight", "bias"):
            total += v.size
    return total


def _field_items(node: Any):
    for f in getattr(node, "__dataclass_fields__", {}):
        if f in ("input_type", "output_type", "metadata"):
            continue
        yield f, getattr(node, f)


def diff_graphs(a: nir.NIRGraph, b: nir.NIRGraph, *, ignore_fields: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences in nodes, edges and parameters (exact comparison, dtype-insensitive
    for numbers). Empty list = identical. Used by round-trip tests and to prove compression touched
    only weights."""
    fa, fb = flatten(a), flatten(b)
    out = []
    if set(fa.nodes) != set(fb.nodes):
        out.append(f"nodes differ: only in first {sorted(set(fa.nodes) - set(fb.nodes))}, "
                   f"only in second {sorted(set(fb.nodes) - set(fa.nodes))}")
    if sorted(fa.edges) != sorted(fb.edges):
        out.append(f"edges differ: {sorted(set(fa.edges) ^ set(fb.edges))}")
    for name in sorted(set(fa.nodes) & set(fb.nodes)):
        na, nb = fa.nodes[name], fb.nodes[name]
        if type(na) is not type(nb):
            out.append(f"{name}: type {type(na).__name__} != {type(nb).__name__}")
            continue
        if isinstance(na, (nir.Input, nir.Output, nir.Flatten)):
            for which in ("input", "output"):
                if node_shape(na, which) != node_shape(nb, which):
                    out.append(f"{name}: {which} shape {node_shape(na, which)} != {node_shape(nb, which)}")
        for f, va in _field_items(na):
            if f in ignore_fields:
                continue
            vb = getattr(nb, f)
            if isinstance(va, str) or isinstance(vb, str):
                same = str(va) == str(vb)
            elif va is None or vb is None:
                same = va is None and vb is None
            else:
                xa, xb = np.asarray(va), np.asarray(vb)
                same = xa.shape == xb.shape and np.array_equal(xa, xb)
                if not same and xa.size == xb.size == 1:  # 0-d vs (1,) scalars, int vs array(int)
                    same = np.array_equal(xa.reshape(-1), xb.reshape(-1))
            if not same:
                out.append(f"{name}.{f} differs")
    return out


def check_weight_inputs(fg: FlatGraph) -> None:
    """SbcError when a weight layer takes another number of inputs than the node feeding it gives: no
    simulator can run such a model, so it is refused on load rather than failing inside the first step."""
    for name in fg.weight_nodes():
        want = node_shape(fg.nodes[name], "input")
        for src in fg.preds[name] + fg.back_preds[name]:
            got = node_shape(fg.nodes[src], "output")
            if want and got and int(np.prod(want)) != int(np.prod(got)):
                raise SbcError(f"node {name!r} ({fg.kind(name)}) takes input of shape {want} but {src!r} "
                               f"({fg.kind(src)}) gives shape {got}: the model's shapes do not fit")
