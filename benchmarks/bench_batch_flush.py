import time, numpy as np, sbc_onnx as sbc
from sbc_onnx.calibrate import calibrate
from sbc_onnx.sim import Walker
from sbc_onnx.compress.hessian import HessianAccumulator
g = sbc.load_model('examples/models/sew_resnet_mnist.nir')
data = sbc.load_mnist('/work/shared/data/mnist', start=5000, limit=256, steps=4, encoding="analog", shape=(1, 28, 28))
w = Walker(g, sbc.SimConfig.from_graph(g))
real = HessianAccumulator.flush
state = {"on": True}
def flush(self):
    if state["on"] or self._fill == self.block_rows: real(self)
HessianAccumulator.flush = flush
calibrate(w, data.take(32), batch_size=32)
for rep in range(3):
    for on in (True, False):
        state["on"] = on
        t = time.perf_counter(); c = calibrate(w, data, batch_size=32); dt = time.perf_counter() - t
        state["on"] = True
        hs = sum(l.seconds for l in c.layers.values())
        print("per-batch flush" if on else "end-only flush ", f"total {dt:.2f} s, hessian seconds {hs:.2f}")
