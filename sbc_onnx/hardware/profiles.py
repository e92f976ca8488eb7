"""Hardware profiles: what a neuromorphic chip can represent, as data.

Built-in profiles live as JSON files next to this module (`profiles/<name>.json`); `intN` (N = 2..8) is
a generic integer target without chip limits. `load_profile` also accepts a path to a user JSON file with
the same fields.

Citations.  A field's value may be given plainly or as {"value": v, "source": {...}} where the source
names where the vendor's toolchain or documentation states the constraint: "repo" (owner/name) and
"commit", or "document" (a URL), with "file", "line" and optionally "quote" (the text at that line), or
"source": null with a "why" (no public source found).  Every constraint of a built-in profile is cited
this way (tests/test_hardware.py); `Profile.citations` keeps them, `sbc-onnx profiles NAME` prints them.

Fields (None = not limited / not checked):
  weight_bits, weight_min, weight_max   integer weight codes and their signed range
  scale_granularity     per_tensor | per_population | shared_exponent (one scale per weight layer)
                        or per_output_neuron (one scale per output channel / target neuron)
  scale_mantissa_bits   the folded scale s is rounded to this many significant bits (s = m * 2^e):
                        weights s*q and thresholds s*theta are then exact in float32, so the float
                        twin reproduces the integer model spike for spike (IF with integer inputs)
  affine_bias           False: non-zero Affine/Conv biases are not supported by the toolchain
  bias_bits, threshold_bits, state_bits   integer widths of neuron parameters (None: float / analog)
  threshold_signed      False: the threshold is an unsigned integer
  reset_modes           subset of {to_v_reset, subtract};  v_reset_zero_only: reset potential must be 0
  decay                 none | fixed12 (Loihi du/dv) | bitshift (Xylo dash) | float | analog
  fan_in_max, fan_out_max   non-zero synapses into / out of one neuron
  signed_rows           fan-in counts synapse rows: an input takes one row per sign of its weights
                        (BrainScaleS-2: excitatory and inhibitory rows), shared by the layer's neurons
  fan_out_layers_max    destinations (layers) one layer may send to
  neurons_per_core, cores, neurons_max, synapses_max, inputs_max, outputs_max
  homogeneous_params    neuron parameters must be equal within a layer (one value per population)
  nir_nodes             NIR node types the toolchain's importer accepts
  conv_kernel_max, conv_strides, pool_sizes, input_hw_max, core_kernel_memory, core_neuron_memory
                        Speck / DYNAP-CNN layer rules and its per-core memory model
  no_consecutive_weight_layers   SpiNNaker2: a weight layer may not feed another weight layer
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import SbcError

PROFILE_DIR = Path(__file__).with_name("profiles")
GRANULARITIES = ("per_tensor", "per_population", "shared_exponent", "per_output_neuron")
DECAYS = ("none", "fixed12", "bitshift", "float", "analog")
RESETS = ("to_v_reset", "subtract")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    weight_bits: int
    weight_min: int
    weight_max: int
    scale_granularity: str
    scale_mantissa_bits: int = 8
    affine_bias: bool = True
    bias_bits: int | None = None
    threshold_bits: int | None = None
    threshold_signed: bool = True
    state_bits: int | None = None
    reset_modes: tuple = RESETS
    v_reset_zero_only: bool = False
    decay: str = "float"
    fan_in_max: int | None = None
    signed_rows: bool = False
    fan_out_max: int | None = None
    fan_out_layers_max: int | None = None
    neurons_per_core: int | None = None
    cores: int | None = None
    neurons_max: int | None = None
    synapses_max: int | None = None
    inputs_max: int | None = None
    outputs_max: int | None = None
    homogeneous_params: bool = False
    nir_nodes: tuple | None = None
    conv_kernel_max: int | None = None
    conv_strides: tuple | None = None
    pool_sizes: tuple | None = None
    input_hw_max: tuple | None = None
    core_kernel_memory: tuple | None = None
    core_neuron_memory: tuple | None = None
    no_consecutive_weight_layers: bool = False
    sources: tuple = field(default_factory=tuple)  # free-text notes
    citations: tuple = field(default_factory=tuple, compare=False)  # (field, source dict or None, why) per field

    @property
    def per_channel(self) -> bool:
        return self.scale_granularity == "per_output_neuron"

    @property
    def integer_neurons(self) -> bool:
        """Thresholds / state are integers on the chip (else float or analog)."""
        return self.threshold_bits is not None or self.state_bits is not None

    @property
    def grid_scheme(self) -> str:
        """The sbc_onnx grid whose levels are exactly [weight_min, weight_max]."""
        if self.weight_min == -(2 ** (self.weight_bits - 1)) and self.weight_max == 2 ** (self.weight_bits - 1) - 1:
            return "symmetric"
        if self.weight_min == -self.weight_max == -(2 ** (self.weight_bits - 1) - 1):
            return "symmetric_restricted"
        raise SbcError(f"profile {self.name}: weight range [{self.weight_min}, {self.weight_max}] is not a "
                       f"symmetric {self.weight_bits}-bit grid")

    def int_range(self, bits: int | None, signed: bool = True) -> tuple[int, int] | None:
        if bits is None:
            return None
        return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

    def summary(self) -> str:
        thr = "float/analog" if self.threshold_bits is None else (
            f"{self.threshold_bits}-bit {'signed' if self.threshold_signed else 'unsigned'}")
        return (f"{self.name}: weights {self.weight_bits}-bit [{self.weight_min}, {self.weight_max}], scale "
                f"{self.scale_granularity}, thresholds {thr}, state "
                f"{'float/analog' if self.state_bits is None else f'{self.state_bits}-bit'}, reset "
                f"{'/'.join(self.reset_modes)}, decay {self.decay}")


UNCITED = ("name", "description", "sources", "citations")  # fields that are not chip constraints


def _source_problem(src: Any, why: Any) -> str | None:
    """What is wrong with one citation, or None."""
    if src is None:
        return None if isinstance(why, str) and why.strip() else "a null source needs a 'why'"
    if not isinstance(src, dict):
        return "source must be an object or null"
    if not (("repo" in src and "commit" in src) or "document" in src):
        return "source needs 'repo' and 'commit', or 'document'"
    if not isinstance(src.get("file"), str) or not src["file"]:
        return "source needs a 'file'"
    line = src.get("line")
    if not isinstance(line, int) or isinstance(line, bool) or line < 1:
        return "source needs a 'line' (an integer >= 1)"
    return None


def _unwrap(d: dict[str, Any], origin: str) -> tuple[dict[str, Any], tuple]:
    """Plain field values and the citations of the fields given as {"value", "source"[, "why"]}."""
    plain, cites = {}, []
    for k, v in d.items():
        if isinstance(v, dict) and "value" in v:
            extra = set(v) - {"value", "source", "why", "note"}
            if extra or "source" not in v:
                raise SbcError(f"profile {origin}: field {k} must be {{\"value\", \"source\"[, \"why\", \"note\"]}}")
            problem = _source_problem(v["source"], v.get("why"))
            if problem:
                raise SbcError(f"profile {origin}: field {k}: {problem}")
            cites.append((k, v["source"], v.get("why") or v.get("note")))
            v = v["value"]
        plain[k] = v
    return plain, tuple(cites)


def _validate(d: dict[str, Any], origin: str) -> Profile:
    if not isinstance(d, dict):
        raise SbcError(f"profile {origin}: expected a JSON object of fields, got {type(d).__name__}")
    d, cites = _unwrap(d, origin)
    if cites:
        d["citations"] = cites
    known = {f.name for f in fields(Profile)}
    unknown = set(d) - known
    if unknown:
        raise SbcError(f"profile {origin}: unknown field(s) {sorted(unknown)}")
    missing = [f for f in ("name", "description", "weight_bits", "weight_min", "weight_max",
                           "scale_granularity") if f not in d]
    if missing:
        raise SbcError(f"profile {origin}: missing field(s) {missing}")
    d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    p = Profile(**d)
    if not 2 <= p.weight_bits <= 8:
        raise SbcError(f"profile {origin}: weight_bits must be 2..8 (the compressor's grids), got {p.weight_bits}")
    if not p.weight_min < 0 < p.weight_max:
        raise SbcError(f"profile {origin}: weight range must contain negative and positive codes")
    if p.scale_granularity not in GRANULARITIES:
        raise SbcError(f"profile {origin}: scale_granularity must be one of {GRANULARITIES}")
    if p.decay not in DECAYS:
        raise SbcError(f"profile {origin}: decay must be one of {DECAYS}")
    if not p.reset_modes or set(p.reset_modes) - set(RESETS):
        raise SbcError(f"profile {origin}: reset_modes must be a non-empty subset of {RESETS}")
    if not 2 <= p.scale_mantissa_bits <= 16:
        raise SbcError(f"profile {origin}: scale_mantissa_bits must be 2..16")
    p.grid_scheme  # noqa: B018  (raises if the range is not a grid the compressor has)
    return p


def format_source(src: dict | None, why: str | None = None) -> str:
    """One line for a citation: repo@commit file:line "quote" (note), or "no public source: why"."""
    if src is None:
        return f"no public source: {why}"
    where = src.get("repo", src.get("document"))
    if "commit" in src:
        where += f"@{src['commit'][:10]}"
    text = f"{where} {src['file']}:{src['line']}"
    if src.get("quote"):
        text += f' "{src["quote"]}"'
    return text + (f" ({why})" if why else "")


def int_profile(bits: int) -> Profile:
    """Generic integer target: N-bit symmetric weights, one scale per output neuron, 32-bit integer
    thresholds and state, every NIR node type, no size limits."""
    return _validate({
        "name": f"int{bits}", "description": f"generic {bits}-bit integer weights, per-output-neuron scales, "
        "32-bit integer thresholds/state, no chip limits", "weight_bits": bits, "weight_min": -(2 ** (bits - 1)),
        "weight_max": 2 ** (bits - 1) - 1, "scale_granularity": "per_output_neuron", "bias_bits": 32, "threshold_bits": 32,
        "state_bits": 32, "sources": ("generic profile (no chip)",)}, f"int{bits}")


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json")) + ["intN (N = 2..8)"]


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A built-in profile by name (loihi2, speck, spinnaker2, xylo-audio2, brainscales2, int2..int8)
    or a JSON file with the same fields."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    s = str(name_or_path)
    m = re.fullmatch(r"int(\d+)", s.lower())
    if m:
        bits = int(m.group(1))
        if not 2 <= bits <= 8:
            raise SbcError(f"profile {s}: generic integer profiles are int2 .. int8")
        return int_profile(bits)
    path = PROFILE_DIR / f"{s.lower()}.json"
    if not path.exists():
        path = Path(s)
        if path.suffix == ".json" and not path.is_file():
            raise SbcError(f"profile file not found: {path}")
        if path.suffix != ".json":
            raise SbcError(f"unknown hardware profile {s!r}; built-in: {', '.join(profile_names())}, "
                           f"or a path to a profile .json")
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SbcError(f"cannot read profile {path}: {e}") from e
    return _validate(d, str(path))
